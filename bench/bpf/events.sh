#!/usr/bin/env bash
# events.sh measures what the BPF flow events (drops, policy verdicts of
# new flows) cost from_pod per packet, events on vs compiled out, in
# interleaved rounds of one run (BPF_PROG_TEST_RUN; bpf/redirect
# TestFlowEventsCost). Needs root.
#   bench/bpf/events.sh            # 8 rounds of 20000 packets per case
#   ROUNDS=16 N=50000 bench/bpf/events.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ $(id -u) -ne 0 ]]; then
	echo "bench/bpf/events.sh: needs root (BPF)" >&2
	exit 1
fi
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
WARD_BENCH_EVENTS=1 WARD_BENCH_ROUNDS="${ROUNDS:-8}" WARD_BENCH_N="${N:-20000}" \
	go test -v -run '^TestFlowEventsCost$' -count=1 ./bpf/redirect/ | grep -v '^=== RUN\|^--- PASS\|^ok\|^PASS'
