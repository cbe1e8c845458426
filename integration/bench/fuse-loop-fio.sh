#!/bin/bash
# Block-device benchmark of the fuse-loop frontend, side by side in one run (needs root, fio,
# qemu-storage-daemon from qemu-utils; build first with `cargo build --release -p backstore`):
#   ceiling: a plain loop device over the page-cached raw data;
#   peer:    qemu-storage-daemon's FUSE export of the raw data under a direct-I/O loop device;
#   ours:    overlaybd-attach --frontend fuse-loop over an LZ4 ZFile layer of the same data.
# Prints IOPS / MiB/s for 4 KiB random read at QD1 and QD32 and 1 MiB sequential read, and each
# result as a ratio to the ceiling and to the peer. Usage: integration/bench/fuse-loop-fio.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${1:-8}
B=target/release
for t in fio qemu-storage-daemon; do command -v $t >/dev/null || { echo "$t is not installed (apt-get install fio qemu-utils)"; exit 1; }; done
[ -x $B/overlaybd-attach ] || { echo "build first: cargo build --release -p backstore"; exit 1; }
W=$(mktemp -d /tmp/obd-bench.XXXXXX)
APID="" QPID="" LOOPS=()
cleanup() {
  [ -n "$APID" ] && kill -TERM "$APID" 2>/dev/null && wait "$APID" 2>/dev/null
  for l in "${LOOPS[@]:-}"; do [ -n "$l" ] && losetup -d "$l" 2>/dev/null; done
  [ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
  umount "$W/fuse.img" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
attach() {
  $B/overlaybd-attach --frontend fuse-loop --run-dir "$W/run" "$1" >"$W/a.out" 2>"$W/a.err" & APID=$!
  for _ in $(seq 200); do DEV=$(head -1 "$W/a.out" 2>/dev/null || true); [ -b "${DEV:-/x}" ] && return 0; sleep 0.05; done
  echo "no device: $(cat "$W/a.err")"; exit 1
}
detach() { kill -TERM "$APID"; wait "$APID"; APID=""; }
MIB=384
# The data: half random, half text-like (LZ4 about 2:1 overall), written through a writable device.
$B/overlaybd-create "$W/d" "$W/i" 1
printf '{"upper":{"index":"%s","data":"%s"}}' "$W/i" "$W/d" > "$W/rw.json"
python3 - "$W/raw.img" $MIB <<'PY'
import os, sys
path, mib = sys.argv[1], int(sys.argv[2])
line = b"overlaybd block data 0123456789 abcdefghijklmnopqrstuvwxyz\n"
text = (line * ((1 << 20) // len(line) + 1))[: 1 << 20]
with open(path, "wb") as f:
    for i in range(mib):
        f.write(os.urandom(1 << 20) if i < mib // 2 else text)
PY
attach "$W/rw.json"
dd if="$W/raw.img" of="$DEV" bs=1M oflag=direct status=none
detach
$B/overlaybd-commit -z "$W/d" "$W/i" "$W/layer.zfile"
printf '{"lowers":[{"file":"%s"}]}' "$W/layer.zfile" > "$W/ro.json"
cat "$W/raw.img" "$W/layer.zfile" >/dev/null
fio_run() { # $1 device, $2 rw, $3 bs, $4 iodepth -> "IOPS BW_KiB"
  fio --name=b --filename="$1" --direct=1 --ioengine=libaio --rw="$2" --bs="$3" --iodepth="$4" --size=${MIB}m \
      --runtime="$T" --time_based --output-format=terse 2>/dev/null | awk -F';' '{print $8, $7}'
}
CASES=("randread 4k 1" "randread 4k 32" "read 1m 8")
declare -A R
measure() { # $1 label, $2 device
  for c in "${CASES[@]}"; do set -- "$1" "$2" $c; R["$1 $3 $4 $5"]=$(fio_run "$2" "$3" "$4" "$5"); done
}
L=$(losetup -f --show "$W/raw.img"); LOOPS+=("$L")
measure ceiling "$L"
losetup -d "$L"; LOOPS=()
touch "$W/fuse.img"
qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$W/raw.img" \
  --export type=fuse,id=e,node-name=f,mountpoint="$W/fuse.img",writable=off >"$W/qsd.log" 2>&1 & QPID=$!
for _ in $(seq 100); do grep -q "$W/fuse.img" /proc/mounts && break; sleep 0.05; done
LQ=$(losetup -f --show --direct-io=on -r "$W/fuse.img"); LOOPS+=("$LQ")
measure peer "$LQ"
losetup -d "$LQ"; LOOPS=(); kill "$QPID"; wait "$QPID" 2>/dev/null || true; QPID=""
attach "$W/ro.json"
measure ours "$DEV"
detach
printf '%-22s %14s %14s %14s %10s %10s\n' case ceiling qsd-fuse ours ours/ceil ours/qsd
for c in "${CASES[@]}"; do
  set -- $c
  read -r ci cb <<<"${R[ceiling $1 $2 $3]}"; read -r pi pb <<<"${R[peer $1 $2 $3]}"; read -r oi ob <<<"${R[ours $1 $2 $3]}"
  if [ "$2" = 1m ]; then u="MiB/s"; cv=$((cb / 1024)); pv=$((pb / 1024)); ov=$((ob / 1024)); else u="IOPS"; cv=$ci; pv=$pi; ov=$oi; fi
  printf '%-22s %14s %14s %14s %10s %10s\n' "$1 $2 QD$3 ($u)" "$cv" "$pv" "$ov" \
    "$(python3 -c "print(f'{$ov/max($cv,1):.2f}')")" "$(python3 -c "print(f'{$ov/max($pv,1):.2f}')")"
done
