# Case for ../shared/tools/stargz-peer/coldstart.sh: overlaybd with a start-up trace. As the
# overlaybd case, then `ctr-obd record-trace` runs the benchmark's command once (in the prep
# containerd, lazily) and builds the acceleration-layer image, which is pushed and pulled.
# The snapshotter prefetches the traced blocks while the container starts.
# shellcheck disable=SC1091
. "$(dirname "${BASH_SOURCE[0]}")/overlaybd.sh"
CASE_SNAPSHOTTER=obdtrace
case_prepare() {
	local repo=${1%:*} tag=${1##*:}
	local cmd=${RUN_CMD:-cat /etc/hello.txt}
	"$OBD_BIN/overlaybd-convertor" -r "$repo" -i "$tag" -o obd --plain --algorithm "$OBD_ALGORITHM" -d "$(dirname "$CTR_ADDRESS")/obd-work" \
		--db-type none >&2 || return 1
	"$OBD_BIN/ctr-obd" --address "$CTR_ADDRESS" rpull --plain-http --snapshotter "$CASE_SNAPSHOTTER" "$repo:obd" >&2 ||
		return 1
	"$OBD_BIN/ctr-obd" --address "$CTR_ADDRESS" record-trace --time "${OBD_TRACE_TIME:-60}" \
		--disable-network-isolation --snapshotter "$CASE_SNAPSHOTTER" --working-dir "$(dirname "$CTR_ADDRESS")/traces" \
		"$repo:obd" "$repo:obd-trace" sh -c "$cmd" >&2 || return 1
	# (the lazily pulled layers are mounted from $repo, where they are; the acceleration layer uploaded)
	"$OBD_BIN/ctr-obd" --address "$CTR_ADDRESS" push --plain-http "$repo:obd-trace" >&2 || return 1
	echo obd-trace
}
