#!/bin/bash
# Userspace apply benchmark, side by side in one run (needs root for the baseline's loop mount;
# build first with `cargo build --release -p backstore`):
#   ceiling: `tar -x` onto a fresh ext4 on a loop device, then sync and unmount;
#   ours:    overlaybd-apply into a fresh sparse writable layer (made with --mkfs) and
#            overlaybd-commit -z -t of it: no device, no mount.
# Two layers: a base layer (this machine's /usr/bin, /usr/lib and /usr/share, about 200 MB) and
# a layer of large sparse files (4 x 288 MiB, mostly zeros, about 1.15 GB of tar). Prints MB/s of
# uncompressed tar for both and ours as a ratio to the ceiling.
# Usage: integration/bench/apply.sh [BASE_MB]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_MB=${1:-200}
B=$PWD/target/release
[ -x $B/overlaybd-apply ] || { echo "build first: cargo build --release -p backstore"; exit 1; }
W=$(mktemp -d /tmp/obd-apply-bench.XXXXXX)
cleanup() { umount "$W/mnt" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

# The layers.
(cd / && find usr/bin usr/lib usr/share -xdev \( -type f -o -type l -o -type d \) 2>/dev/null | sort) > "$W/all"
python3 - "$W/all" "$BASE_MB" > "$W/list" <<'PY'
import os, sys
limit = int(sys.argv[2]) << 20
total = 0
for p in open(sys.argv[1]).read().split("\n"):
    if not p:
        continue
    try:
        st = os.lstat("/" + p)
    except OSError:
        continue
    total += st.st_size if not os.path.isdir("/" + p) else 0
    print(p)
    if total > limit:
        break
PY
tar -cf "$W/base.tar" -C / --no-recursion -T "$W/list" 2>/dev/null || true
mkdir -p "$W/sparse"
python3 - "$W/sparse" <<'PY'
import os, sys
for i in range(4):
    with open(os.path.join(sys.argv[1], f"disk{i}.img"), "wb") as f:
        f.truncate(288 << 20)
        for k in range(0, 288, 16):
            f.seek(k << 20)
            f.write(os.urandom(256 << 10))
PY
tar -cf "$W/sparse.tar" -C "$W" sparse
rm -rf "$W/sparse"

mbps() { python3 -c "import sys; print(f'{$1 / 1e6 / $2:.1f}')"; }
ceiling() { # tar -x onto ext4 on a loop device, synced
  truncate -s 64G "$W/raw.img"
  mkfs.ext4 -q -F "$W/raw.img"
  mkdir -p "$W/mnt" && mount -o loop "$W/raw.img" "$W/mnt"
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s=$(date +%s.%N)
  tar -xf "$1" -C "$W/mnt"
  sync -f "$W/mnt"
  umount "$W/mnt"
  local e=$(date +%s.%N)
  rm -f "$W/raw.img"
  python3 -c "print($e - $s)"
}
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
printf '%-8s %10s %14s %14s %8s\n' layer "tar MB" "ceiling MB/s" "ours MB/s" ratio
for l in base sparse; do
  size=$(stat -c %s "$W/$l.tar")
  tc=$(ceiling "$W/$l.tar")
  to=$(ours "$W/$l.tar")
  printf '%-8s %10.1f %14s %14s %8s\n' $l "$(python3 -c "print($size/1e6)")" "$(mbps $size $tc)" "$(mbps $size $to)" \
    "$(python3 -c "print(f'{$tc / $to:.2f}')")"
done
