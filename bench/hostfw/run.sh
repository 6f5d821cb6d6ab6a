#!/usr/bin/env bash
# Host firewall cost on a node's native device (issue 13): iperf3 from an
# outside namespace to the node's host namespace with nothing attached,
# with host_in/host_out attached and no host policy (target >= 0.98x of no
# BPF), and with a host policy enforced that allows the flow; interleaved
# rounds in one run (conformance/hostfw TestHostFirewallThroughput). Needs
# root and iperf3. Table in bench/results/hostfw.md.
#   WARD_HOSTFW_BENCH_DURATION=5s  iperf3 time per run
#   WARD_HOSTFW_BENCH_ROUNDS=5     interleaved rounds (median reported)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export WARD_HOSTFW_BENCH=1
export WARD_HOSTFW_BENCH_ROUNDS="${WARD_HOSTFW_BENCH_ROUNDS:-5}"
export WARD_HOSTFW_BENCH_OUT="$ROOT/bench/results/hostfw.md"
go test -count=1 -timeout 10m -run '^TestHostFirewallThroughput$' -v ./conformance/hostfw/ | grep -v '^=== RUN'
