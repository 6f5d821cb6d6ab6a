#!/usr/bin/env bash
# lint.sh: gofmt, go vet, staticcheck, the cgo boundary rule (only
# proxylib/abi may import "C"), and the process boundaries: which ward
# packages link into which binary (go list -deps).
set -euo pipefail
cd "$(dirname "$0")/.."
MOD=github.com/wardproxy/ward
fail=0
unformatted="$(gofmt -l $(git ls-files '*.go'))"
if [[ -n "$unformatted" ]]; then
	echo "lint: gofmt needed:"; echo "$unformatted"; fail=1
fi
go vet ./... || fail=1
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./... || fail=1
cgo="$(go list -f '{{if .CgoFiles}}{{.ImportPath}}{{end}}' ./... | grep -v "^$MOD/proxylib/abi\$" || true)"
if [[ -n "$cgo" ]]; then
	echo "lint: packages other than proxylib/abi use cgo:"; echo "$cgo"; fail=1
fi

# Process boundaries. Each row: binary, its main package, build tags, a ward
# package pattern (bash glob, relative to the module) and whether the binary
# may link it: "deny" rows are checked first, then the binary may link only
# the ward packages its "allow" rows name (no allow row: any not denied).
#
#   libward.so runs inside Envoy: the filters, the in-Envoy policy client and
#   what they share, nothing of the agent (which owns the host: BPF, the DNS
#   proxy, secrets on disk, the policy directory), and no test filter.
#   wardd and ward never link the cgo binding (its symbols resolve only
#   inside Envoy) nor test code. ward, the CLI, talks to the live agent over
#   its sockets (agent/api), it does not embed the agent.
boundaries='
libward.so  ./proxylib/module  -         deny   agent             the node agent runs in wardd
libward.so  ./proxylib/module  -         deny   agent/*           the node agent runs in wardd
libward.so  ./proxylib/module  -         deny   cmd/*             commands are separate processes
libward.so  ./proxylib/module  -         deny   filters/dns       the DNS proxy runs in wardd
libward.so  ./proxylib/module  -         deny   bpf/*             the datapath is the agent'"'"'s (needs CAP_BPF)
libward.so  ./proxylib/module  -         deny   secrets           secrets reach Envoy over SDS, not from disk
libward.so  ./proxylib/module  -         deny   policy/dirsource  the policy directory is read by wardd
libward.so  ./proxylib/module  -         deny   xds               the xDS server runs in wardd (xds/npds, the wire type, is shared)
libward.so  ./proxylib/module  -         deny   envoy-bootstrap   wardd starts Envoy
libward.so  ./proxylib/module  -         deny   internal/*        test and process helpers
libward.so  ./proxylib/module  -         deny   proxylib/testfilters  test filters only in build/test/libward.so (-tags wardtest)
libward.so  ./proxylib/module  -         allow  proxylib          the registry and filter interfaces
libward.so  ./proxylib/module  -         allow  proxylib/*        the binding, policy client, ward.http, ward.kafka
libward.so  ./proxylib/module  -         allow  filters/http      HTTP rule matching
libward.so  ./proxylib/module  -         allow  filters/kafka     Kafka codec and rules
libward.so  ./proxylib/module  -         allow  filters/memcache  memcached parser (generic l7proto)
libward.so  ./proxylib/module  -         allow  filters/r2d2      the line-based test parser (generic l7proto)
libward.so  ./proxylib/module  -         allow  flow              flow records
libward.so  ./proxylib/module  -         deny   policy            the policy engine runs in wardd (the filters compile policy/l7)
libward.so  ./proxylib/module  -         allow  policy/l7         the one L7 rule vocabulary
libward.so  ./proxylib/module  -         allow  xds/npds          the policy resource (wire type)
test-libward.so ./proxylib/module wardtest need proxylib/testfilters  the test module must register the ward.test.* filters
wardd       ./cmd/wardd        -         deny   proxylib/abi      cgo; its symbols resolve only inside Envoy
wardd       ./cmd/wardd        -         deny   proxylib/module   the module is loaded by Envoy
wardd       ./cmd/wardd        -         deny   proxylib/testfilters  test code
wardd       ./cmd/wardd        -         deny   internal/testenv  test code
wardd       ./cmd/wardd        -         deny   conformance/*     test code
wardd       ./cmd/wardd        -         deny   bench/*           benchmarks
ward-install ./cmd/ward-install -      allow  -                 the init container links no ward package (standard library only)
ward        ./cmd/ward         -         deny   proxylib/abi      cgo; its symbols resolve only inside Envoy
ward        ./cmd/ward         -         deny   proxylib/module   the module is loaded by Envoy
ward        ./cmd/ward         -         deny   proxylib/testfilters  test code
ward        ./cmd/ward         -         deny   agent             the CLI talks to the live agent over its sockets (agent/api)
ward        ./cmd/ward         -         deny   xds               the xDS server runs in wardd
ward        ./cmd/ward         -         deny   internal/testenv  test code
ward        ./cmd/ward         -         deny   conformance/*     test code
ward        ./cmd/ward         -         deny   bench/*           benchmarks
'

# chain ROOT PKG prints the import chain from ROOT to PKG, given the
# "importer imports..." lines of go list -deps on stdin (breadth first: a
# shortest chain).
chain() {
	awk -v root="$1" -v target="$2" '
		{ for (i = 2; i <= NF; i++) if (!(($1, $i) in edge)) { edge[$1, $i] = 1; kids[$1] = kids[$1] " " $i } }
		END {
			q[0] = root; seen[root] = 1; head = 0; tail = 1
			while (head < tail) {
				p = q[head++]
				if (p == target) break
				n = split(kids[p], k, " ")
				for (i = 1; i <= n; i++) if (!(k[i] in seen)) { seen[k[i]] = 1; parent[k[i]] = p; q[tail++] = k[i] }
			}
			if (!(target in seen)) { print target; exit }
			out = target
			for (p = target; p != root; p = parent[p]) out = parent[p] " -> " out
			print out
		}'
}

# ward_deps prints the ward packages of a go list -deps graph, relative to
# the module.
ward_deps() { cut -d' ' -f1 | sed -n "s|^$MOD/||p"; }

declare -A graphs
while read -r bin pkg tags verb pat reason; do
	[[ -z "$bin" ]] && continue
	key="$pkg|$tags"
	if [[ -z "${graphs[$key]+x}" ]]; then
		args=(-deps -f '{{.ImportPath}}{{range .Imports}} {{.}}{{end}}')
		[[ "$tags" != "-" ]] && args+=(-tags "$tags")
		graphs[$key]="$(go list "${args[@]}" "$pkg")"
	fi
	graph="${graphs[$key]}"
	root="${pkg#./}"
	deps="$(ward_deps <<<"$graph")"
	case "$verb" in
	deny)
		while read -r d; do
			# shellcheck disable=SC2053 # $pat is a glob on purpose
			if [[ "$d" == $pat && "$d" != "$root" ]]; then
				echo "lint: $bin links $d ($reason): $(chain "$MOD/$root" "$MOD/$d" <<<"$graph" | sed "s|$MOD/||g")"; fail=1
			fi
		done <<<"$deps"
		;;
	need)
		if ! grep -qx -- "$pat" <<<"$deps"; then
			echo "lint: $bin does not link $pat ($reason)"; fail=1
		fi
		;;
	esac
done <<<"$boundaries"

# The allow rows: every ward package a binary links must match one.
declare -A allowed
while read -r bin pkg tags verb pat reason; do
	[[ "$verb" == allow ]] && allowed["$bin|$pkg|$tags"]+=" $pat"
done <<<"$boundaries"
for key in "${!allowed[@]}"; do
	IFS='|' read -r bin pkg tags <<<"$key"
	graph="${graphs["$pkg|$tags"]}"
	root="${pkg#./}"
	while read -r d; do
		[[ "$d" == "$root" ]] && continue
		ok=0
		for pat in ${allowed[$key]}; do
			# shellcheck disable=SC2053
			[[ "$d" == $pat ]] && ok=1 && break
		done
		if ((!ok)); then
			echo "lint: $bin links $d, which no allow row of scripts/lint.sh names (add one saying why it belongs there): $(chain "$MOD/$root" "$MOD/$d" <<<"$graph" | sed "s|$MOD/||g")"; fail=1
		fi
	done < <(ward_deps <<<"$graph")
done
exit $fail
