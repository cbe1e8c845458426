# Guest script (run by integration/vm/vm.sh): the fuse-loop host scenario over ublk in the 6.12 VM.
# The reference image read-only, then a writable device: mkfs, write, detach, commit, attach as a lower.
set -e
attach() { # $1 config -> DEV, A
  overlaybd-attach --frontend ublk "$1" > /tmp/attach.out 2> /tmp/attach.err &
  A=$!
  for i in $(seq 300); do DEV=$(head -1 /tmp/attach.out 2>/dev/null); [ -b "$DEV" ] && return 0; kill -0 $A 2>/dev/null || break; sleep 0.1; done
  echo "FAIL: no ublk device: $(cat /tmp/attach.err)"; exit 1
}
detach() { kill -TERM $A; wait $A || { echo "FAIL: overlaybd-attach exited with $?: $(cat /tmp/attach.err)"; exit 1; }; }
mkdir -p /mnt
printf '{"lowers":[{"file":"/share/reference/hello-world-amd64-overlaybd-layer.tar"}],"resultFile":"/tmp/r1"}' > /tmp/ro.json
attach /tmp/ro.json
case $DEV in /dev/ublkb*) ;; *) echo "FAIL: not a ublk device: $DEV"; exit 1;; esac
[ "$(cat /sys/block/${DEV#/dev/}/ro)" = 1 ] || { echo "FAIL: read-only device is writable"; exit 1; }
mount -o ro "$DEV" /mnt
[ "$(sha256sum /mnt/hello | cut -d' ' -f1)" = d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014 ] || { echo "FAIL: /hello differs"; exit 1; }
umount /mnt; detach
grep -q success /tmp/r1
cd /tmp
overlaybd-create d i 1
printf '{"upper":{"data":"/tmp/d","index":"/tmp/i"}}' > /tmp/rw.json
attach /tmp/rw.json
mkfs.ext4 -q -b 4096 "$DEV"
mount "$DEV" /mnt
mkdir -p /mnt/x
for n in $(seq 40); do dd if=/dev/urandom of=/mnt/x/f$n bs=4k count=$((n * 7)) 2>/dev/null; done
(cd /mnt/x && sha256sum f* > /tmp/sums)
rm /mnt/x/f1 /mnt/x/f2
sed -i '/ f1$/d; / f2$/d' /tmp/sums
fstrim /mnt 2>/dev/null || true
umount /mnt; detach
e2fsck -fn /tmp/d >/dev/null 2>&1 || true
overlaybd-commit -z -t /tmp/d /tmp/i /tmp/layer.tar
printf '{"lowers":[{"file":"/tmp/layer.tar"}]}' > /tmp/ro2.json
attach /tmp/ro2.json
mount -o ro "$DEV" /mnt
(cd /mnt/x && sha256sum -c -s /tmp/sums) || { echo "FAIL: files differ after commit"; exit 1; }
[ "$(ls /mnt/x | wc -l)" = 38 ] || { echo "FAIL: wrong file count"; exit 1; }
umount /mnt; detach
[ -z "$(ls /dev/ublkb* 2>/dev/null)" ] || { echo "FAIL: ublk devices left: $(ls /dev/ublkb*)"; exit 1; }
echo "ublk: reference image and writable round trip hold"
