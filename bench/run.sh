#!/usr/bin/env bash
# bench/run.sh: every benchmark with its baselines in the same run.
#   bench/run.sh            all benches
#   bench/run.sh http       one of: http, go, scale, events, or a bench/*/run.sh name
#   ROUNDS=5 D=5s RULES=1,10,100,1000 bench/run.sh http
# bench/http reports Envoy's CPU time per request (the headline) beside
# req/s and open-loop latency, for HTTP/1.1, h2 and gRPC unary (-grpc); it
# builds the C no-op module (bench/cnoop) with clang (CC to override).
# bench/dns reports each proxy's CPU time per query. scale is the control-plane benchmark of
# issue 17 (agent: one endpoint's policy change among 10,000 endpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
mkdir -p bench/results
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
if [[ $what == all || $what == http ]]; then
	go run ./bench/http -rules "${RULES:-1,10,100,1000}" -rounds "${ROUNDS:-5}" -d "${D:-5s}" -grpc | tee "bench/results/http-$stamp.md"
fi
if [[ $what == all || $what == go ]]; then
	go test -run '^$' -bench . -benchmem -count "${COUNT:-1}" ./filters/... ./policy/... ./proxylib/... | tee "bench/results/go-$stamp.txt"
fi
if [[ $what == all || $what == scale ]]; then
	go test -run '^$' -bench '^BenchmarkPolicyChangeOneEndpoint$' -benchtime "${SCALE_N:-20x}" ./agent/ | tee "bench/results/scale-$stamp.txt"
fi
if [[ $what == all || $what == events ]]; then
	bash bench/bpf/events.sh | tee "bench/results/events-$stamp.txt"
fi
for f in bench/*/run.sh; do
	name="$(basename "$(dirname "$f")")"
	if [[ $what == all || $what == "$name" ]]; then
		bash "$f" | tee "bench/results/$name-$stamp.txt"
	fi
done
