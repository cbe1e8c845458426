# Guest script: the reference hello-world image started through containerd, runc and
# overlaybd-snapshotter on each frontend given (tcmu, ublk), pulled lazily through containerd's
# CRI plugin from a docker-registry in the guest, as a Kubernetes node would; then nothing of the
# devices is left once the image is removed and the snapshotter stopped. (--no-pivot: the
# guest runs from its initramfs, where pivot_root is not allowed.)
set -e
. /share/guest/lib.sh
mount -t cgroup2 none /sys/fs/cgroup 2>/dev/null || true
ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
mkdir -p /tmp/ctr /etc; cd /tmp/ctr
[ -f /etc/hosts ] || echo "127.0.0.1 localhost" > /etc/hosts
[ -f /etc/resolv.conf ] || : > /etc/resolv.conf
R=/share/reference
sha() { sha256sum "$1" | cut -d' ' -f1; }
# the registry's storage, written directly: blobs, layer links, the manifest under the tag
REG=/tmp/ctr/reg/docker/registry/v2
repo=$REG/repositories/hello
put_blob() { # file -> its hex
  h=$(sha "$1"); mkdir -p "$REG/blobs/sha256/${h%${h#??}}/$h" "$repo/_layers/sha256/$h"
  cp "$1" "$REG/blobs/sha256/${h%${h#??}}/$h/data"; printf "sha256:%s" "$h" > "$repo/_layers/sha256/$h/link"; echo "$h"
}
put_blob $R/hello-world-amd64-overlaybd-layer.tar >/dev/null
put_blob $R/hello-world-amd64-overlaybd-config.json >/dev/null
m=$(put_blob $R/hello-world-amd64-overlaybd-manifest.json)
rm -rf "$repo/_layers/sha256/$m"
for d in "$repo/_manifests/revisions/sha256/$m" "$repo/_manifests/tags/obd/current" "$repo/_manifests/tags/obd/index/sha256/$m"; do
  mkdir -p "$d"; printf "sha256:%s" "$m" > "$d/link"
done
printf 'version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: /tmp/ctr/reg\nhttp:\n  addr: 127.0.0.1:5000\n' > reg.yml
docker-registry serve reg.yml > reg.log 2>&1 &
RPID=$!
end=$(deadline 300)
until wget -q -O /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; do
  running $RPID && before "$end" || fail "the registry did not start: $(cat reg.log)"; sleep 0.1
done
printf '[[mirrorRegistry]]\nhost = "127.0.0.1:5000"\ninsecure = true\n' > snap.toml
IMG=127.0.0.1:5000/hello:obd
for F in "$@"; do
  W=/tmp/ctr/$F; mkdir -p $W
  overlaybd-snapshotter --config snap.toml --root $W/root --address $W/snap.sock --run-dir $W/run --frontend "$F" > $W/snap.log 2>&1 &
  SPID=$!
  end=$(deadline 300)
  until [ -S $W/snap.sock ]; do running $SPID && before "$end" || fail "the snapshotter did not start: $(cat $W/snap.log)"; sleep 0.1; done
  cat > $W/containerd.toml <<EOC
version = 2
root = "$W/croot"
state = "$W/cstate"
[grpc]
  address = "$W/c.sock"
[ttrpc]
  address = "$W/c.sock.ttrpc"
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = "$W/snap.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlaybd"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."127.0.0.1:5000"]
    endpoint = ["http://127.0.0.1:5000"]
EOC
  containerd --config $W/containerd.toml > $W/containerd.log 2>&1 &
  CPID=$!
  C="ctr -a $W/c.sock -n k8s.io"
  end=$(deadline 300)
  until $C version >/dev/null 2>&1; do running $CPID && before "$end" || fail "containerd did not start: $(tail -5 $W/containerd.log)"; sleep 0.1; done
  # containerd serves before its CRI plugin has initialized (asynchronously): until then a
  # PullImage is refused with "server is not initialized yet"
  end=$(deadline 300)
  until cri-pull --address $W/c.sock $IMG > $W/pull.out 2>&1; do
    grep -q "not initialized" $W/pull.out && before "$end" || fail "CRI pull: $(cat $W/pull.out) $(tail -5 $W/snap.log)"
    sleep 0.5
  done
  $C content ls | grep -q "^sha256:022231c3f1af" && fail "the layer blob was downloaded into the content store"
  $C run --rm --no-pivot --snapshotter overlaybd $IMG hello-$F > $W/run.out 2>&1 || fail "ctr run: $(cat $W/run.out) $(tail -5 $W/snap.log)"
  grep -q "Hello from Docker!" $W/run.out || fail "no greeting: $(cat $W/run.out)"
  DEV=$(cat $W/root/snapshots/*/block/backstore_mark | head -1); expect_kind
  grep -q "status=206" reg.log || fail "the registry served no ranges"
  $C image rm $IMG > /dev/null
  kill $CPID; wait_gone $CPID 300 || fail "containerd did not exit after SIGTERM"; wait $CPID 2>/dev/null || true
  kill -TERM $SPID; wait_gone $SPID 600 || fail "the snapshotter did not exit after SIGTERM: $(tail -5 $W/snap.log)"
  wait $SPID || fail "the snapshotter exited with $?: $(tail -5 $W/snap.log)"
  check_clean
  echo "containerd ($F): the hello-world image pulled lazily through CRI greets"
done
kill $RPID
