#!/bin/bash
# Builds the overlaybd tools and shows them at work on the real reference layer (hello-world,
# made by the reference convertor): inspect it, decompress it, read /hello out of its ext4, and
# serve it as a real disk and mount it; then convert the hello-world source layer ourselves in
# user space (mkfs + apply + commit, no device) and check the independent reader accepts it and
# /hello is the same. Needs root (loop devices, FUSE, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/deps.sh
cargo build --release --locked -p backstore
B=target/release
REF=backstore/tests/data/reference/hello-world-amd64-overlaybd-layer.tar
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
set -x
$B/overlaybd-info --verify "$REF"
$B/overlaybd-zfile -x "$REF" "$W/hello.lsmt"
$B/overlaybd-dump "$REF" -o "$W/disk.img"
debugfs -R "dump /hello $W/hello" "$W/disk.img" 2>/dev/null
sha256sum "$W/hello"
# the same image as a real disk (fuse-loop), mounted read-only
printf '{"lowers":[{"file":"%s"}],"resultFile":"%s"}' "$PWD/$REF" "$W/result" > "$W/config.v1.json"
$B/overlaybd-attach --frontend fuse-loop --run-dir "$W/run" "$W/config.v1.json" > "$W/attach.out" &
APID=$!
for _ in $(seq 100); do DEV=$(head -1 "$W/attach.out" 2>/dev/null || true); [ -b "${DEV:-/x}" ] && break; sleep 0.1; done
mkdir -p "$W/mnt" && mount -o ro "$DEV" "$W/mnt"
sha256sum "$W/mnt/hello"
umount "$W/mnt"; kill -TERM $APID; wait $APID
# the source layer (gzip tar) converted in user space: no device, no mount
$B/overlaybd-create -s "$W/data" "$W/index" 64 --mkfs
printf '{"upper":{"data":"%s","index":"%s"}}' "$W/data" "$W/index" > "$W/rw.json"
$B/overlaybd-apply backstore/tests/data/reference/hello-world-amd64-source-layer.tar.gz "$W/rw.json"
$B/overlaybd-commit -z -t --uuid "$(cat /proc/sys/kernel/random/uuid)" "$W/data" "$W/index" "$W/layer.tar"
python3 backstore/tests/data/obd_inspect.py info "$W/layer.tar"
$B/overlaybd-dump "$W/layer.tar" -o "$W/ours.img"
debugfs -R "dump /hello $W/hello2" "$W/ours.img" 2>/dev/null
sha256sum "$W/hello2"
