#!/bin/bash
# Cold start of a container whose workload reads a small part of a large image: lazily through
# overlaybd-snapshotter (pulled through containerd's CRI plugin, as a Kubernetes node pulls)
# against a full pull with containerd's overlayfs snapshotter. Both from the same local registry
# behind the same rate-limited link (rateproxy.py), each from a clean state (fresh containerd and
# snapshotter roots, empty cache, page cache dropped). Prints time and bytes from the registry for
# each, and the ratio. Needs root.
#   integration/bench/coldstart.sh [MBIT [FILES [FILE_MB]]]     defaults: 100 Mbit/s, 4 x 50 MiB
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin:/sbin"
MBIT=${1:-100}
FILES=${2:-4}
FILE_MB=${3:-50}
scripts/deps.sh >/dev/null
cargo build --release --locked -p backstore -p overlaybd-snapshotter -p overlaybd-integration 2>&1 | tail -1
B=$PWD/target/release
W=$(mktemp -d /var/tmp/obd-coldstart.XXXXXX)
PIDS=""
cleanup() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for m in $(awk -v w="$W" 'index($5, w) == 1 {print $5}' /proc/self/mountinfo | sort -r); do umount -l "$m" 2>/dev/null || true; done
  rmdir /sys/fs/cgroup/bench /sys/fs/cgroup/k8s.io 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
sha() { sha256sum "$1" | cut -d' ' -f1; }
WORKLOAD='sha256sum /data/small; head -c 1048576 /data/f0 | sha256sum'

echo "== building the image: busybox + $FILES x $FILE_MB MiB of random data"
R=$W/rootfs
mkdir -p "$R"/{bin,etc,data,tmp,proc,sys,dev}
cp /bin/busybox "$R/bin/busybox"
for a in sh cat head sha256sum ls; do ln -s busybox "$R/bin/$a"; done
echo "a small file the workload reads" > "$R/data/small"
for i in $(seq 0 $((FILES - 1))); do head -c $((FILE_MB << 20)) /dev/urandom > "$R/data/f$i"; done
tar --sort=name --mtime=2020-01-01 --owner=0 --group=0 --numeric-owner -C "$R" -cf "$W/layer.tar" .
gzip -1 -n -c "$W/layer.tar" > "$W/layer.tgz"
# the overlaybd layer, converted in user space (mkfs + apply + commit), as the convertor does
mkdir -p "$W/obd"
"$B/overlaybd-create" -s "$W/obd/data" "$W/obd/index" 64 --mkfs
printf '{"upper":{"data":"%s","index":"%s"}}' "$W/obd/data" "$W/obd/index" > "$W/obd/rw.json"
"$B/overlaybd-apply" "$W/layer.tar" "$W/obd/rw.json"
"$B/overlaybd-commit" -z -t "$W/obd/data" "$W/obd/index" "$W/layer.obd"

layout() { # DIR TAG LAYER_FILE MEDIA_TYPE DIFF_ID ANNOTATIONS_JSON
  local d=$1 tag=$2 f=$3 mt=$4 diff=$5 ann=$6
  mkdir -p "$d/blobs/sha256"
  local ld; ld=$(sha "$f"); cp "$f" "$d/blobs/sha256/$ld"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$diff" > "$d/config.json"
  local cd; cd=$(sha "$d/config.json"); mv "$d/config.json" "$d/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"%s","digest":"sha256:%s","size":%s%s}]}' \
    "$cd" "$(stat -c%s "$d/blobs/sha256/$cd")" "$mt" "$ld" "$(stat -c%s "$f")" "$ann" > "$d/manifest.json"
  local md; md=$(sha "$d/manifest.json"); mv "$d/manifest.json" "$d/blobs/sha256/$md"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$d/oci-layout"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$md" "$(stat -c%s "$d/blobs/sha256/$md")" "$tag" > "$d/index.json"
}
layout "$W/oci" oci "$W/layer.tgz" application/vnd.oci.image.layer.v1.tar+gzip "$(sha "$W/layer.tar")" ""
OD=$(sha "$W/layer.obd"); OS=$(stat -c%s "$W/layer.obd")
layout "$W/obdimg" obd "$W/layer.obd" application/vnd.oci.image.layer.v1.tar "$OD" \
  ",\"annotations\":{\"containerd.io/snapshot/overlaybd/blob-digest\":\"sha256:$OD\",\"containerd.io/snapshot/overlaybd/blob-size\":\"$OS\",\"containerd.io/snapshot/overlaybd/version\":\"0.1.0\"}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
RP=$(free_port); PP=$(free_port)
mkdir -p "$W/reg"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$W/reg" "$RP" > "$W/reg.yml"
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & PIDS="$PIDS $!"
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$RP/v2/" >/dev/null && break; sleep 0.1; done
skopeo copy -q --dest-tls-verify=false "oci:$W/oci:oci" "docker://127.0.0.1:$RP/bench/img:oci"
skopeo copy -q --dest-tls-verify=false --preserve-digests "oci:$W/obdimg:obd" "docker://127.0.0.1:$RP/bench/img:obd"
python3 integration/bench/rateproxy.py "$PP" "127.0.0.1:$RP" "$MBIT" "$W/bytes" & PIDS="$PIDS $!"
for _ in $(seq 100); do [ -f "$W/bytes" ] && break; sleep 0.1; done
HOST=127.0.0.1:$PP
printf '== image: %s MB uncompressed, OCI layer %s MB (gzip), overlaybd layer %s MB; link %s Mbit/s\n' \
  $(($(stat -c%s "$W/layer.tar") / 1000000)) $(($(stat -c%s "$W/layer.tgz") / 1000000)) $((OS / 1000000)) "$MBIT"

start_containerd() { # DIR CRI(yes/no) SNAPSOCK
  local d=$1
  mkdir -p "$d"
  {
    printf 'version = 2\nroot = "%s/root"\nstate = "%s/state"\n[grpc]\n  address = "%s/sock"\n[ttrpc]\n  address = "%s/sock.ttrpc"\n' "$d" "$d" "$d" "$d"
    if [ "$2" = yes ]; then
      printf '[proxy_plugins.overlaybd]\n  type = "snapshot"\n  address = "%s"\n' "$3"
      printf '[plugins."io.containerd.grpc.v1.cri"]\n  disable_apparmor = true\n  [plugins."io.containerd.grpc.v1.cri".containerd]\n    snapshotter = "overlaybd"\n    disable_snapshot_annotations = false\n'
      printf '  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."%s"]\n    endpoint = ["http://%s"]\n' "$HOST" "$HOST"
    else
      printf 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
    fi
  } > "$d/config.toml"
  containerd --config "$d/config.toml" >"$d/log" 2>&1 & CPID=$!; PIDS="$PIDS $CPID"
  for _ in $(seq 100); do ctr -a "$d/sock" version >/dev/null 2>&1 && break; sleep 0.05; done
}
now() { date +%s.%N; }
bytes() { cat "$W/bytes"; }

echo "== overlayfs: full pull, then run"
sync; echo 3 > /proc/sys/vm/drop_caches
start_containerd "$W/c1" no ""
C="ctr -a $W/c1/sock -n bench"
b0=$(bytes); t0=$(now)
$C image pull --plain-http "$HOST/bench/img:oci" >/dev/null
OUT1=$($C run --rm "$HOST/bench/img:oci" r1 sh -c "$WORKLOAD")
t1=$(now); b1=$(bytes)
$C image rm "$HOST/bench/img:oci" >/dev/null; kill $CPID; wait $CPID 2>/dev/null || true

echo "== overlaybd: lazy CRI pull, then run"
printf '[[mirrorRegistry]]\nhost = "%s"\ninsecure = true\n' "$HOST" > "$W/snap.toml"
"$B/overlaybd-snapshotter" --config "$W/snap.toml" --root "$W/sn/root" --address "$W/sn/sock" --run-dir "$W/sn/run" \
  --frontend fuse-loop >"$W/snap.log" 2>&1 & SPID=$!; PIDS="$PIDS $SPID"
for _ in $(seq 100); do [ -S "$W/sn/sock" ] && break; sleep 0.05; done
sync; echo 3 > /proc/sys/vm/drop_caches
start_containerd "$W/c2" yes "$W/sn/sock"
C="ctr -a $W/c2/sock -n k8s.io"
b2=$(bytes); t2=$(now)
"$B/cri-pull" --address "$W/c2/sock" "$HOST/bench/img:obd" >/dev/null
OUT2=$($C run --rm --snapshotter overlaybd "$HOST/bench/img:obd" r2 sh -c "$WORKLOAD")
t3=$(now); b3=$(bytes)
$C image rm "$HOST/bench/img:obd" >/dev/null; kill $CPID; wait $CPID 2>/dev/null || true
kill $SPID; wait $SPID 2>/dev/null || true

[ "$OUT1" = "$OUT2" ] || { echo "the workload's output differs: $OUT1 / $OUT2"; exit 1; }
python3 - "$t0" "$t1" "$b0" "$b1" "$t2" "$t3" "$b2" "$b3" "$MBIT" <<'PY'
import sys
t0, t1, b0, b1, t2, t3, b2, b3, mbit = map(float, sys.argv[1:])
full, lazy = t1 - t0, t3 - t2
print(f"{'case':<34}{'time s':>9}{'MB from registry':>18}")
print(f"{'overlayfs, full pull + run':<34}{full:>9.2f}{(b1 - b0) / 1e6:>18.1f}")
print(f"{'overlaybd, lazy (CRI) pull + run':<34}{lazy:>9.2f}{(b3 - b2) / 1e6:>18.1f}")
print(f"lazy / full = {lazy / full:.3f}  (link alone for the full pull: {(b1 - b0) * 8 / mbit / 1e6:.2f} s)")
PY
