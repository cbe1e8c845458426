#!/bin/bash
# Builds the overlaybd tools and shows them at work on the real reference layer (hello-world,
# made by the reference convertor): inspect it, decompress it, read /hello out of its ext4, and
# serve it as a real disk and mount it; then convert the hello-world source layer ourselves in
# user space (mkfs + apply + commit, no device) and check the independent reader accepts it and
# /hello is the same; then a registry, containerd (CRI) and overlaybd-snapshotter: the reference
# image pulled lazily through CRI and run, and the plain hello-world image converted registry to
# registry by overlaybd-convertor, pulled by ctr-obd rpull (no layer data) and run lazily.
# Needs root (loop devices, FUSE, mount).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
scripts/deps.sh
cargo build --release --locked -p backstore -p overlaybd-snapshotter -p overlaybd-integration -p overlaybd-convertor -p ctr-obd
B=target/release
REF=backstore/tests/data/reference/hello-world-amd64-overlaybd-layer.tar
W=$(mktemp -d)
cleanup() { for p in ${PIDS:-}; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$W"; }
PIDS=""
trap cleanup EXIT
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
# the snapshotter: a private registry with the reference image, containerd (with its CRI plugin, as
# on a Kubernetes node) using our daemon; the image is pulled lazily and run
set +x
R=backstore/tests/data/reference
O=$W/oci; mkdir -p "$O/blobs/sha256"
for f in overlaybd-layer.tar overlaybd-config.json overlaybd-manifest.json; do
  cp "$R/hello-world-amd64-$f" "$O/blobs/sha256/$(sha256sum "$R/hello-world-amd64-$f" | cut -d' ' -f1)"
done
M=$R/hello-world-amd64-overlaybd-manifest.json
echo '{"imageLayoutVersion":"1.0.0"}' > "$O/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"obd"}}]}' \
  "$(sha256sum "$M" | cut -d' ' -f1)" "$(stat -c%s "$M")" > "$O/index.json"
REG=127.0.0.1:5099
mkdir -p "$W/reg"
printf 'version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n' "$W/reg" "$REG" > "$W/reg.yml"
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & PIDS="$PIDS $!"
for _ in $(seq 100); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false --preserve-digests "oci:$O:obd" "docker://$REG/hello:obd"
printf '[[mirrorRegistry]]\nhost = "%s"\ninsecure = true\n' "$REG" > "$W/snap.toml"
$B/overlaybd-snapshotter --config "$W/snap.toml" --root "$W/snroot" --address "$W/snap.sock" --run-dir "$W/snrun" \
  --frontend fuse-loop >"$W/snap.log" 2>&1 & PIDS="$PIDS $!"
mkdir -p "$W/ctrd"
cat > "$W/ctrd/config.toml" <<EOC
version = 2
root = "$W/ctrd/root"
state = "$W/ctrd/state"
[grpc]
  address = "$W/ctrd/sock"
[ttrpc]
  address = "$W/ctrd/sock.ttrpc"
[proxy_plugins.overlaybd]
  type = "snapshot"
  address = "$W/snap.sock"
[plugins."io.containerd.grpc.v1.cri"]
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlaybd"
    disable_snapshot_annotations = false
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REG"]
    endpoint = ["http://$REG"]
EOC
containerd --config "$W/ctrd/config.toml" >"$W/ctrd/log" 2>&1 & CPID=$!
for _ in $(seq 100); do ctr -a "$W/ctrd/sock" version >/dev/null 2>&1 && [ -S "$W/snap.sock" ] && break; sleep 0.1; done
C="ctr -a $W/ctrd/sock -n k8s.io"
set -x
$B/cri-pull --address "$W/ctrd/sock" "$REG/hello:obd"
$C content ls        # the manifest and the config: no layer blob was downloaded
$C run --rm --snapshotter overlaybd "$REG/hello:obd" hello1
set +x
echo "registry answers for the layer blob (206 = a range):"
grep 'method=GET' "$W/reg.log" | grep 'blobs/sha256:022231c3' | grep -o 'response.status=[0-9]*' | sort | uniq -c
$C image rm "$REG/hello:obd" >/dev/null
# image conversion: the plain hello-world image (the reference's source layer) pushed to the
# registry, converted registry to registry in user space, pulled with ctr-obd rpull (no layer
# data) and run lazily
P=$W/plain; mkdir -p "$P/blobs/sha256"; echo '{"imageLayoutVersion":"1.0.0"}' > "$P/oci-layout"
python3 - "$P" "$R" <<'PY'
import gzip, hashlib, json, os, sys
p, r = sys.argv[1], sys.argv[2]
def blob(b):
    h = hashlib.sha256(b).hexdigest(); open(f"{p}/blobs/sha256/{h}", "wb").write(b); return "sha256:" + h
gz = open(f"{r}/hello-world-amd64-source-layer.tar.gz", "rb").read()
cfg = json.load(open(f"{r}/hello-world-amd64-overlaybd-config.json"))
cfg["rootfs"]["diff_ids"] = ["sha256:" + hashlib.sha256(gzip.decompress(gz)).hexdigest()]
c = json.dumps(cfg).encode()
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(c), "size": len(c)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)}]}).encode()
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": blob(m), "size": len(m), "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}, open(f"{p}/index.json", "w"))
PY
skopeo copy -q --dest-tls-verify=false "oci:$P:latest" "docker://$REG/hello:latest"
set -x
$B/overlaybd-convertor -r "$REG/hello" -i latest -o obd-rs --plain -d "$W/conv" --db-str "$W/dedup.redb"
$B/ctr-obd -a "$W/ctrd/sock" rpull --plain-http "$REG/hello:obd-rs"
ctr -a "$W/ctrd/sock" run --rm --snapshotter overlaybd "$REG/hello:obd-rs" hello2
set +x
ctr -a "$W/ctrd/sock" image rm "$REG/hello:obd-rs" >/dev/null
kill $CPID; wait $CPID 2>/dev/null || true
rmdir /sys/fs/cgroup/k8s.io /sys/fs/cgroup/*/k8s.io /sys/fs/cgroup/default /sys/fs/cgroup/*/default 2>/dev/null || true
