#!/usr/bin/env bash
# bench/run.sh: every benchmark with its baselines in the same run.
#   bench/run.sh            all benches
#   bench/run.sh http       one of: http, go
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
mkdir -p bench/results
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
if [[ $what == all || $what == http ]]; then
	go run ./bench/http -rules "${RULES:-1,10,100,1000}" | tee "bench/results/http-$stamp.md"
fi
if [[ $what == all || $what == go ]]; then
	go test -run '^$' -bench . -benchmem -count "${COUNT:-1}" ./filters/... ./policy/... ./proxylib/... | tee "bench/results/go-$stamp.txt"
fi
for f in bench/*/run.sh; do
	name="$(basename "$(dirname "$f")")"
	if [[ $what == all || $what == "$name" ]]; then
		bash "$f" | tee "bench/results/$name-$stamp.txt"
	fi
done
