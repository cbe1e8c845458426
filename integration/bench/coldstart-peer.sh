#!/bin/bash
# Cold start, side by side with the lazy-pulling peer people use today: overlayfs (full pull),
# stargz-snapshotter and this project's snapshotter (overlaybd, and overlaybd with a start-up
# trace), each from a clean state behind the same rate-limited link, in one run of the
# stargz-peer harness (../shared/tools/stargz-peer/coldstart.sh) per scenario:
#   (a) small read:      cat /etc/hello.txt on the harness image (busybox + 4 x 50 MiB random)
#   (b) whole file:      cat /data/blob-0 | wc -c (one 50 MiB file)
#   (c) = (b) with the trace `ctr-obd record-trace` recorded (case overlaybd-trace)
#   (d) realistic image: a Python runtime from Debian packages (mkimage-python.py) starting up
# and all of them again with 20 ms added per request. For every case it prints time and bytes
# from the registry, and the time as a ratio to stargz's in the same run; for (b) and (c) also
# the time as a ratio to the link time of the file's bytes. Needs root.
#   integration/bench/coldstart-peer.sh [--rate-mbit 100] [--runs 1] [--delays "0 20"] [--scenarios "a b c d"]
# PEER_DIR: the stargz-peer harness (default ../shared/tools/stargz-peer next to this checkout).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export PATH="$PATH:/usr/sbin:/sbin"
RATE=100 RUNS=1 DELAYS="0 20" SCENARIOS="a b c d"
while [ $# -gt 0 ]; do
  case $1 in
    --rate-mbit) RATE=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --delays) DELAYS=$2; shift 2 ;;
    --scenarios) SCENARIOS=$2; shift 2 ;;
    *) echo "usage: $0 [--rate-mbit N] [--runs N] [--delays \"0 20\"] [--scenarios \"a b c d\"]" >&2; exit 2 ;;
  esac
done
PEER_DIR=${PEER_DIR:-$REPO/../shared/tools/stargz-peer}
[ -x "$PEER_DIR/coldstart.sh" ] || { echo "no stargz-peer harness at $PEER_DIR (set PEER_DIR)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 2; }
scripts/deps.sh >/dev/null
export PEER_BIN=${PEER_BIN:-/var/tmp/stargz-peer/bin}
[ -x "$PEER_BIN/containerd-stargz-grpc" ] || "$PEER_DIR/build.sh" >&2
cargo build --release --locked -p overlaybd-snapshotter -p ctr-obd -p overlaybd-convertor 2>&1 | tail -1 >&2
export OBD_BIN=$REPO/target/release

W=$(mktemp -d /var/tmp/obd-coldstart-peer.XXXXXX)
trap 'rm -rf "$W"' EXIT
# the harness with the realistic image in place of its test image, for (d)
cp -r "$PEER_DIR" "$W/peer-python"
cp integration/bench/mkimage-python.py "$W/peer-python/tools/mkimage.py"
CASES="overlayfs stargz $REPO/integration/bench/cases/overlaybd.sh $REPO/integration/bench/cases/overlaybd-trace.sh"
PY='python3 -c "import json, asyncio, http.server, sqlite3, email.parser, decimal, yaml, pygments.lexers, jwt; print(42)"'

for delay in $DELAYS; do
  for s in $SCENARIOS; do
    case $s in
      a) harness=$PEER_DIR; cmd=(); cases="overlayfs stargz $REPO/integration/bench/cases/overlaybd.sh" ;;
      b) harness=$PEER_DIR; cmd=(--cmd 'cat /data/blob-0 | wc -c'); cases="overlayfs stargz $REPO/integration/bench/cases/overlaybd.sh" ;;
      c) harness=$PEER_DIR; cmd=(--cmd 'cat /data/blob-0 | wc -c'); cases="stargz $REPO/integration/bench/cases/overlaybd-trace.sh" ;;
      d) harness=$W/peer-python; cmd=(--cmd "$PY"); cases=$CASES ;;
      *) echo "unknown scenario $s" >&2; exit 2 ;;
    esac
    echo "== scenario $s, ${RATE} Mbit/s, +${delay} ms per request" >&2
    # shellcheck disable=SC2086
    "$harness/coldstart.sh" --rate-mbit "$RATE" --delay-ms "$delay" --runs "$RUNS" "${cmd[@]}" \
      --results "$W/$s-$delay.tsv" $cases >"$W/$s-$delay.log" 2>&1 ||
      { tail -30 "$W/$s-$delay.log" >&2; exit 1; }
  done
done

python3 - "$W" "$RATE" "$DELAYS" "$SCENARIOS" <<'PY'
import csv, os, statistics, sys
w, rate, delays, scenarios = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
what = {"a": "small read", "b": "whole 50 MiB file", "c": "(b) + trace", "d": "python start-up"}
FILE = 50 << 20
link = lambda b: b * 8 / (rate * 1e6) if rate else 0
print(f"rate {rate:g} Mbit/s; times in s (mean of runs); ratio = time / stargz's time in the same scenario")
print(f"{'scenario':<22}{'delay':>6} {'case':<16}{'pull':>7}{'run':>7}{'total':>8}{'MB down':>9}{'vs stargz':>10}{'vs link':>9}")
for d in delays:
    for s in scenarios:
        rows = list(csv.DictReader(open(os.path.join(w, f"{s}-{d}.tsv")), delimiter="\t"))
        by = {}
        for r in rows:
            by.setdefault(r["case"], []).append(r)
        mean = lambda rs, k: statistics.mean(float(r[k]) for r in rs)
        sg = mean(by["stargz"], "total_s") if "stargz" in by else None
        for case, rs in by.items():
            t = mean(rs, "total_s")
            vs = f"{t / sg:.2f}" if sg else "-"
            vl = f"{t / link(FILE):.2f}" if s in "bc" and rate else "-"
            print(f"{s + ' ' + what[s]:<22}{d:>6} {case:<16}{mean(rs, 'pull_s'):>7.2f}{mean(rs, 'run_s'):>7.2f}"
                  f"{t:>8.2f}{mean(rs, 'bytes_down') / 1e6:>9.1f}{vs:>10}{vl:>9}")
print(f"link time of the 50 MiB file alone: {link(FILE):.2f} s")
PY
