# Case for ../shared/tools/stargz-peer/coldstart.sh: this project's overlaybd-snapshotter as a
# containerd proxy plugin. The image is converted by overlaybd-convertor (registry to registry,
# user space) and pulled lazily by `ctr-obd rpull` (no layer data fetched at pull time).
# OBD_BIN: this build's binaries (default target/release of this checkout).
# OBD_FRONTEND: the snapshotter's block frontend (default fuse-loop; tcmu / ublk where the kernel has them).
# OBD_ALGORITHM: the layers' ZFile compression (default zstd; the reference convertor's default is lz4).
# OBD_REFILL: the cache's refillSize, bytes (default 65536; the reference's default is 262144).
# zstd and 64 KiB chunks fetch fewer bytes for small reads; read-ahead keeps large reads in
# large requests either way.
CASE_SNAPSHOTTER=overlaybd
OBD_ALGORITHM=${OBD_ALGORITHM:-zstd}
OBD_REFILL=${OBD_REFILL:-65536}
OBD_BIN=${OBD_BIN:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)/target/release}
OBD_FRONTEND=${OBD_FRONTEND:-fuse-loop}
case_proxy_plugin() { # $1 = per-run dir
	printf '[proxy_plugins.%s]\n  type = "snapshot"\n  address = "%s/%s.sock"\n' "$CASE_SNAPSHOTTER" "$1" "$CASE_SNAPSHOTTER"
}
case_prepare() { # $1 = source ref on the unthrottled registry; prints the tag to pull
	local repo=${1%:*} tag=${1##*:}
	"$OBD_BIN/overlaybd-convertor" -r "$repo" -i "$tag" -o obd --plain --algorithm "$OBD_ALGORITHM" -d "$(dirname "$CTR_ADDRESS")/obd-work" \
		--db-type none >&2
	echo obd
}
case_start() { # $1 = per-run dir: a fresh root, cache and run dir
	mkdir -p "$1"
	printf '[backstore.cacheConfig]\ncacheType = "file"\ncacheDir = "%s/%s-cache"\nrefillSize = %s\n' "$1" "$CASE_SNAPSHOTTER" "$OBD_REFILL" \
		>"$1/$CASE_SNAPSHOTTER.toml"
	RUST_LOG=${OBD_LOG:-info} "$OBD_BIN/overlaybd-snapshotter" --config "$1/$CASE_SNAPSHOTTER.toml" \
		--root "$1/$CASE_SNAPSHOTTER-root" --address "$1/$CASE_SNAPSHOTTER.sock" \
		--run-dir "$1/$CASE_SNAPSHOTTER-run" --frontend "$OBD_FRONTEND" >"$1/$CASE_SNAPSHOTTER.log" 2>&1 &
	CASE_PID=$!
	track_pid "$CASE_PID"
	wait_for_socket "$1/$CASE_SNAPSHOTTER.sock" "$CASE_PID"
}
case_stop() { [ -n "${CASE_PID:-}" ] && stop_pid "$CASE_PID"; CASE_PID=; }
case_pull() {
	"$OBD_BIN/ctr-obd" --address "$CTR_ADDRESS" rpull --plain-http --snapshotter "$CASE_SNAPSHOTTER" "$1"
}
