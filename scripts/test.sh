#!/bin/bash
# The project's tests: formatting, lints (warnings denied), every test of the workspace (as root:
# the fuse-loop tests use real loop devices and FUSE), then the kernel-frontend tests in a
# throwaway VM under Debian's 6.12 kernel (TCMU and ublk), including the reference image run through
# containerd, runc and the snapshotter there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTFLAGS="-D warnings" cargo test --workspace --locked
cargo build --release --locked -p backstore -p overlaybd-snapshotter -p overlaybd-integration -p overlaybd-convertor -p ctr-obd
integration/vm/vm.sh integration/vm/guest/roundtrip.sh 1200 tcmu ublk
integration/vm/vm.sh integration/vm/guest/crash.sh 1200 tcmu ublk
integration/vm/vm.sh integration/vm/guest/containerd.sh 1200 tcmu ublk
