# Guest script (run by integration/vm/vm.sh): the reference image over fuse-loop inside the 6.12 VM,
# and the kernel offers what the TCMU and ublk frontends need.
set -e
echo "kernel $(uname -r)"
ls /dev/ublk-control /sys/kernel/config/target/core >/dev/null
printf '{"lowers":[{"file":"/share/reference/hello-world-amd64-overlaybd-layer.tar"}]}' > /tmp/c.json
overlaybd-attach --frontend fuse-loop --run-dir /run/obd /tmp/c.json > /tmp/out &
A=$!
for i in $(seq 100); do DEV=$(head -1 /tmp/out 2>/dev/null); [ -b "$DEV" ] && break; sleep 0.1; done
mkdir -p /mnt && mount -o ro "$DEV" /mnt && sha256sum /mnt/hello && umount /mnt
kill -TERM $A; wait $A
echo smoke ok
