# Guest script (run by integration/vm/vm.sh): the server of a writable ublk device is killed with
# SIGKILL during writes; fsync'd data survives, `overlaybd-attach --cleanup` removes the dead
# device, and the upper layer reopens.
set -e
attach() {
  overlaybd-attach --frontend ublk "$1" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  for i in $(seq 300); do DEV=$(head -1 /tmp/attach.out 2>/dev/null); [ -b "$DEV" ] && return 0; kill -0 $A 2>/dev/null || break; sleep 0.1; done
  echo "FAIL: no ublk device: $(cat /tmp/attach.err)"; exit 1
}
mkdir -p /mnt; cd /tmp
overlaybd-create d i 1
printf '{"upper":{"data":"/tmp/d","index":"/tmp/i"}}' > /tmp/rw.json
attach /tmp/rw.json
mkfs.ext4 -q -b 4096 "$DEV"
mount "$DEV" /mnt
dd if=/dev/urandom of=/mnt/kept bs=1M count=8 conv=fsync 2>/dev/null
sync
K=$(sha256sum /mnt/kept | cut -d' ' -f1)
dd if=/dev/urandom of=/mnt/unsynced bs=1M count=200 2>/dev/null &
W=$!
sleep 1
kill -KILL $A
wait $A 2>/dev/null || true
# the writer must not hang on the dead device
for i in $(seq 300); do kill -0 $W 2>/dev/null || break; sleep 0.1; done
kill -0 $W 2>/dev/null && { echo "FAIL: writer hangs on the dead device"; exit 1; }
umount /mnt 2>/dev/null || umount -l /mnt
out=$(overlaybd-attach --cleanup --run-dir /run/obd)
echo "$out"
echo "$out" | grep -q "deleted ublk device" || { echo "FAIL: cleanup did not delete the dead device"; exit 1; }
[ -z "$(ls /sys/class/ublk-char 2>/dev/null)" ] || { echo "FAIL: ublk devices left: $(ls /sys/class/ublk-char)"; exit 1; }
attach /tmp/rw.json
mount "$DEV" /mnt
[ "$(sha256sum /mnt/kept | cut -d' ' -f1)" = "$K" ] || { echo "FAIL: fsync'd data lost"; exit 1; }
umount /mnt
e2fsck -fn "$DEV" >/tmp/fsck 2>&1 || { echo "FAIL: e2fsck after recovery"; cat /tmp/fsck; exit 1; }
kill -TERM $A; wait $A
[ -z "$(ls /sys/class/ublk-char 2>/dev/null)" ] || { echo "FAIL: ublk devices left after detach"; exit 1; }
echo "ublk crash: fsync'd data kept, dead device cleaned up, upper reopened"
