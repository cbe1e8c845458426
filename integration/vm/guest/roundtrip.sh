# Guest script (run by integration/vm/vm.sh with the frontends as arguments): for each frontend,
# the reference image read-only; a writable device that takes mkfs and files, is detached,
# committed and attached as a lower; and I/O errors (a layer file cut short, reads past the end)
# that must fail, not hang; and three devices served by one process at once.
set -e
. /share/guest/lib.sh
mkdir -p /mnt; cd /tmp
for F in "$@"; do
  printf '{"lowers":[{"file":"/share/reference/hello-world-amd64-overlaybd-layer.tar"}],"resultFile":"/tmp/r1"}' > ro.json
  attach ro.json; expect_kind
  [ "$(cat /sys/block/${DEV#/dev/}/ro)" = 1 ] || fail "read-only device is writable"
  mount -o ro "$DEV" /mnt
  [ "$(sha256sum /mnt/hello | cut -d' ' -f1)" = d3f7d10e296e5c626ea78539cb38cd8dffd043bea3627da35ce3b20c0ac68014 ] || fail "/hello differs"
  umount /mnt; detach
  grep -q success r1 || fail "result file: $(cat r1)"
  rm -f d i layer.tar
  overlaybd-create d i 1
  printf '{"upper":{"data":"/tmp/d","index":"/tmp/i"}}' > rw.json
  attach rw.json; expect_kind
  mkfs.ext4 -q -b 4096 "$DEV"
  mount "$DEV" /mnt
  mkdir -p /mnt/x
  for n in $(seq 40); do dd if=/dev/urandom of=/mnt/x/f$n bs=4k count=$((n * 7)) 2>/dev/null; done
  (cd /mnt/x && sha256sum f* > /tmp/sums)
  rm /mnt/x/f1 /mnt/x/f2
  sed -i '/ f1$/d; / f2$/d' sums
  fstrim /mnt 2>/dev/null || true
  umount /mnt; detach
  overlaybd-commit -z -t d i layer.tar
  printf '{"lowers":[{"file":"/tmp/layer.tar"}]}' > ro2.json
  attach ro2.json
  mount -o ro "$DEV" /mnt
  (cd /mnt/x && sha256sum -c -s /tmp/sums) || fail "files differ after commit"
  [ "$(ls /mnt/x | wc -l)" = 38 ] || fail "wrong file count"
  umount /mnt; detach
  # a layer file cut short under a live device: reads fail with EIO, promptly
  cp layer.tar cut.tar
  printf '{"lowers":[{"file":"/tmp/cut.tar"}]}' > cut.json
  attach cut.json
  dd if="$DEV" of=/dev/null bs=4k count=1 iflag=direct 2>/dev/null || fail "first read failed"
  size=$(($(blockdev --getsize64 "$DEV") / 4096))
  dd if="$DEV" of=/dev/null bs=4k skip=$size count=1 iflag=direct 2>/dev/null || fail "reading at the end is EOF, not an error"
  truncate -s 8192 cut.tar
  # (no hang: a read the server never answered would wait for kernel timeouts and retries; the
  # bound is wide for an emulated guest on a loaded host, and no duration is asserted)
  dd if="$DEV" of=/dev/null bs=1M iflag=direct 2>/tmp/dd.err & R=$!
  wait_gone $R 300 || { kill -KILL $R; fail "a read of a cut layer hangs"; }
  if wait $R; then fail "reads of a cut layer succeeded"; fi
  # EIO over ublk; over TCMU the kernel reports the MEDIUM ERROR sense as ENODATA
  grep -qiE "input/output error|no data available" /tmp/dd.err || fail "expected an I/O error: $(cat /tmp/dd.err)"
  running $A || fail "the server died on a cut layer: $(cat /tmp/attach.err)"
  detach
  # three devices from one process: two read-only images and a writable disk, used together
  for n in 1 2; do printf '{"lowers":[{"file":"/share/reference/hello-world-amd64-overlaybd-layer.tar"}]}' > m$n.json; done
  rm -f d3 i3; overlaybd-create d3 i3 1
  printf '{"upper":{"data":"/tmp/d3","index":"/tmp/i3"}}' > m3.json
  attach_many m1.json m2.json m3.json
  set -- $DEVS "$@"; D1=$1 D2=$2 D3=$3; shift 3
  [ "$D1" != "$D2" ] && [ "$D2" != "$D3" ] || fail "devices share a node: $DEVS"
  mkdir -p /m1 /m2 /m3
  mount -o ro "$D1" /m1; mount -o ro "$D2" /m2
  mkfs.ext4 -q -b 4096 "$D3"; mount "$D3" /m3
  cp /m1/hello /m3/hello & C=$!; sha256sum /m2/hello > /tmp/h2; wait $C
  for f in /m1/hello /m3/hello; do sha256sum "$f" | grep -q "^$(cut -d' ' -f1 /tmp/h2) " || fail "$f differs across devices"; done
  umount /m1 /m2 /m3; detach
  check_clean
  echo "$F: reference image, writable round trip, I/O errors and three devices in one process hold"
done
