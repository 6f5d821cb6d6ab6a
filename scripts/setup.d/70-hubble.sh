# The flow stream's real clients (monitor/, metrics/, conformance/observe):
# the hubble CLI (github.com/cilium/cilium/hubble, tools/hubble) runs
# `hubble observe` against wardd's Observer socket, and promtool
# (github.com/prometheus/prometheus/cmd/promtool, tools/promtool) checks
# wardd's metrics exposition. Each is built from the Go module proxy in its
# own tools module (their dependency graphs stay out of ward's go.mod) into
# build/bin, and rebuilt only when its tools module changes (a stamp of
# go.mod, go.sum and tools.go beside the binary). A few minutes the first time.
build_tool() {
	local name=$1 pkg=$2 dir="$ROOT/tools/${3:-$1}" bin="$ROOT/build/bin/$1"
	local stamp
	stamp="$(cat "$dir/go.mod" "$dir/go.sum" "$dir"/*.go | sha256sum)"
	stamp="${stamp%% *}"
	if [[ -x $bin && -f $bin.stamp && $(<"$bin.stamp") == "$stamp" ]]; then
		return
	fi
	log "building $name from $pkg (tools/${3:-$1}; a few minutes)"
	mkdir -p "$ROOT/build/bin"
	go -C "$dir" build -o "$bin.tmp" "$pkg"
	mv "$bin.tmp" "$bin"
	printf '%s\n' "$stamp" >"$bin.stamp"
}
build_tool hubble github.com/cilium/cilium/hubble
build_tool promtool github.com/prometheus/prometheus/cmd/promtool
