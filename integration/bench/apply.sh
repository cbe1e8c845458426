#!/bin/bash
# Userspace apply benchmark, side by side in one run (needs root for the baseline's loop mount;
# build first with `cargo build --release -p backstore`):
#   ceiling: `tar -x` onto a fresh ext4 on a loop device, then sync and unmount;
#   ours:    overlaybd-apply into a fresh sparse writable layer (made with --mkfs) and
#            overlaybd-commit -z -t of it: no device, no mount.
# Two layers: a base layer (a sample of this machine's /usr, /etc and /var/lib/dpkg, about 200 MB) and
# a layer of large sparse files (4 x 288 MiB, mostly zeros, about 1.15 GB of tar). Prints MB/s of
# uncompressed tar for both and ours as a ratio to the ceiling.
# Each figure is the median of REPS runs. Usage: integration/bench/apply.sh [BASE_MB [REPS]]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_MB=${1:-200}
REPS=${2:-3}
B=$PWD/target/release
[ -x $B/overlaybd-apply ] || { echo "build first: cargo build --release -p backstore"; exit 1; }
W=$(mktemp -d /tmp/obd-apply-bench.XXXXXX)
cleanup() { umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# The layers: base.tar and sparse.tar in $W (see layers.sh).
. integration/bench/layers.sh
make_layers "$W" "$BASE_MB"

mbps() { python3 -c "import sys; print(f'{$1 / 1e6 / $2:.1f}')"; }
ours() { # apply + commit in user space
  rm -f "$W/d" "$W/i" "$W/out.tar"
  $B/overlaybd-create -s "$W/d" "$W/i" 64 --mkfs
  printf '{"upper":{"data":"%s","index":"%s"}}' "$W/d" "$W/i" > "$W/c.json"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s=$(date +%s.%N)
  $B/overlaybd-apply "$1" "$W/c.json"
  $B/overlaybd-commit -z -t "$W/d" "$W/i" "$W/out.tar"
  sync -f "$W/out.tar"
  local e=$(date +%s.%N)
  python3 -c "print($e - $s)"
}
echo "base layer: $(wc -l < "$W/list") entries"
printf '%-8s %10s %14s %14s %8s\n' layer "tar MB" "ceiling MB/s" "ours MB/s" ratio
for l in base sparse; do
  size=$(stat -c %s "$W/$l.tar")
  tc=$(for r in $(seq $REPS); do ceiling "$W" -xf "$W/$l.tar"; done | median)
  to=$(for r in $(seq $REPS); do ours "$W/$l.tar"; done | median)
  printf '%-8s %10.1f %14s %14s %8s\n' $l "$(python3 -c "print($size/1e6)")" "$(mbps $size $tc)" "$(mbps $size $to)" \
    "$(python3 -c "print(f'{$tc / $to:.2f}')")"
done
