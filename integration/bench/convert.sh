#!/bin/bash
# Image conversion benchmark, side by side in one run (needs root for the ceiling's loop mount,
# docker-registry and skopeo; build first with
# `cargo build --release -p overlaybd-convertor`):
#   ceiling: `tar -xzf` of the image's gzip layers onto a fresh ext4 on a loop device, then sync
#            and unmount (what unpacking the image costs on this machine);
#   ours:    overlaybd-convertor registry to registry against a local docker-registry: download,
#            decompress, apply in user space, commit to ZFile, upload, config and manifest.
# Two images of one gzip layer each (see layers.sh): a base layer sampled from this machine's
# /usr (about BASE_MB) and a layer of large sparse files (about 1.15 GB of tar). Prints MB of
# uncompressed layer per second for both and ours as a ratio to the ceiling; each figure is the
# median of REPS runs (the dedup store off, so every run converts).
# Usage: integration/bench/convert.sh [BASE_MB [REPS]]
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE_MB=${1:-200}
REPS=${2:-3}
B=$PWD/target/release
[ -x $B/overlaybd-convertor ] || { echo "build first: cargo build --release -p overlaybd-convertor"; exit 1; }
W=$(mktemp -d /tmp/obd-convert-bench.XXXXXX)
REG_PID=
cleanup() {
  umount "$W/mnt" 2>/dev/null || true
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

. integration/bench/layers.sh
make_layers "$W" "$BASE_MB"
gzip -1 "$W/base.tar" "$W/sparse.tar"
# each layer as an image in an OCI layout, pushed to a local registry
layout() { python3 - "$W" "$1" <<'PY'
import gzip, hashlib, json, os, sys
w, n = sys.argv[1], sys.argv[2]
o = os.path.join(w, "oci-" + n)
os.makedirs(os.path.join(o, "blobs/sha256"))
def blob(data):
    h = hashlib.sha256(data).hexdigest()
    open(os.path.join(o, "blobs/sha256", h), "wb").write(data)
    return "sha256:" + h
layers, diffs = [], []
for n in (n,):
    gz = open(os.path.join(w, n + ".tar.gz"), "rb").read()
    d = hashlib.sha256()
    with gzip.open(os.path.join(w, n + ".tar.gz")) as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            d.update(b)
    diffs.append("sha256:" + d.hexdigest())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz), "size": len(gz)})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(cfg), "size": len(cfg)},
    "layers": layers}).encode()
open(os.path.join(o, "index.json"), "w").write(json.dumps({"schemaVersion": 2, "manifests": [
    {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": blob(m), "size": len(m),
     "annotations": {"org.opencontainers.image.ref.name": "src"}}]}))
open(os.path.join(o, "oci-layout"), "w").write('{"imageLayoutVersion":"1.0.0"}')
PY
}
PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
mkdir -p "$W/reg"
printf 'version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$W/reg" "$PORT" > "$W/reg.yml"
docker-registry serve "$W/reg.yml" >"$W/reg.log" 2>&1 & REG_PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.05; done
for l in base sparse; do
  layout $l
  skopeo copy -q --dest-tls-verify=false --preserve-digests "oci:$W/oci-$l:src" "docker://127.0.0.1:$PORT/bench/$l:src"
  rm -rf "$W/oci-$l"
done

ours() {
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s=$(date +%s.%N)
  $B/overlaybd-convertor -r "127.0.0.1:$PORT/bench/$1" -i src -o "obd$2" --plain -d "$W/work" --db-type none \
    >"$W/conv.log" 2>&1 || { cat "$W/conv.log"; exit 1; }
  local e=$(date +%s.%N)
  python3 -c "print($e - $s)"
}
tar_mb() { python3 -c "
import gzip, sys
n = 0
with gzip.open(sys.argv[1]) as f:
    for b in iter(lambda: f.read(1 << 20), b''):
        n += len(b)
print(n / 1e6)" "$1"; }
echo "base layer: $(wc -l < "$W/list") entries"
printf '%-8s %10s %9s %16s %16s %8s\n' layer "tar MB" "gzip MB" "ceiling MB/s" "convertor MB/s" "ratio"
for l in base sparse; do
  mb=$(tar_mb "$W/$l.tar.gz")
  tc=$(for r in $(seq $REPS); do ceiling "$W" -xzf "$W/$l.tar.gz"; done | median)
  to=$(for r in $(seq $REPS); do ours $l $r; done | median)
  printf '%-8s %10.1f %9.1f %16.1f %16.1f %8s\n' $l "$mb" "$(python3 -c "print($(stat -c %s "$W/$l.tar.gz")/1e6)")" \
    "$(python3 -c "print($mb/$tc)")" "$(python3 -c "print($mb/$to)")" "$(python3 -c "print(f'{$tc / $to:.2f}')")"
done
echo "ratio: convertor throughput / ceiling throughput (above 1: faster than unpacking with tar)"
