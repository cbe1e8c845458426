#!/bin/bash
# The project's tests: formatting, lints (warnings denied), every test of the workspace (as root:
# the fuse-loop tests use real loop devices and FUSE), then the kernel-frontend tests in a
# throwaway VM under Debian's 6.12 kernel (TCMU and ublk), including the reference image run through
# containerd, runc and the snapshotter there.
# Every step runs even when an earlier one failed (and every test binary, --no-fail-fast), so one
# run shows every failure; the steps that failed are listed at the end and the exit code is 1.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/deps.sh || exit 1

failed=()
step() {
  local name=$1 start=$SECONDS
  shift
  echo "==> $name"
  if "$@"; then
    echo "==> $name: ok ($((SECONDS - start)) s)"
  else
    echo "==> $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings
step tests env RUSTFLAGS="-D warnings" cargo test --workspace --locked --no-fail-fast
step release cargo build --release --locked -p backstore -p overlaybd-snapshotter -p overlaybd-integration -p overlaybd-convertor -p ctr-obd
for guest in roundtrip crash containerd; do
  # the VM runs the release binaries: never stale ones from an earlier build
  if [[ " ${failed[*]} " == *" release "* ]]; then
    echo "==> vm $guest: not run (no release build)"
    failed+=("vm $guest")
  else
    step "vm $guest" integration/vm/vm.sh "integration/vm/guest/$guest.sh" 1200 tcmu ublk
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
