# Guest script (run by integration/vm/vm.sh with the frontends as arguments): the server of a
# writable device is killed with SIGKILL during writes; fsync'd data survives, nothing hangs,
# `overlaybd-attach --cleanup` removes the dead device, and the upper layer reopens.
set -e
. /share/guest/lib.sh
mkdir -p /mnt; cd /tmp
for F in "$@"; do
  rm -f d i
  overlaybd-create d i 1
  printf '{"upper":{"data":"/tmp/d","index":"/tmp/i"}}' > rw.json
  attach rw.json
  mkfs.ext4 -q -b 4096 "$DEV"
  mount "$DEV" /mnt
  dd if=/dev/urandom of=/mnt/kept bs=1M count=8 conv=fsync 2>/dev/null
  sync
  K=$(sha256sum /mnt/kept | cut -d' ' -f1)
  dd if=/dev/urandom of=/mnt/unsynced bs=1M count=200 2>/dev/null &
  W=$!
  # the server dies once the writer has written (or is done)
  end=$(deadline 300)
  until [ -s /mnt/unsynced ] || ! running $W; do before "$end" || fail "the writer wrote nothing"; sleep 0.1; done
  kill -KILL $A
  wait $A 2>/dev/null || true
  out=$(overlaybd-attach --cleanup --run-dir /run/obd)
  echo "$out"
  [ -n "$out" ] || fail "cleanup found nothing to remove"
  # the writer must not hang on the dead device (200 MiB into the page cache of an emulated
  # guest: a wide bound)
  wait_gone $W 600 || fail "writer hangs on the dead device"
  wait $W 2>/dev/null || true
  umount /mnt 2>/dev/null || umount -l /mnt
  check_clean
  attach rw.json
  mount "$DEV" /mnt
  [ "$(sha256sum /mnt/kept | cut -d' ' -f1)" = "$K" ] || fail "fsync'd data lost"
  umount /mnt
  e2fsck -fn "$DEV" >/tmp/fsck 2>&1 || { cat /tmp/fsck; fail "e2fsck after recovery"; }
  detach
  check_clean
  echo "$F crash: fsync'd data kept, dead device cleaned up, upper reopened"
done
