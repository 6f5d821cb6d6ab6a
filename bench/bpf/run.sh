#!/usr/bin/env bash
# run.sh benchmarks ward's eBPF datapath (bpf/redirect) against its
# baselines in one run: no BPF, attached but not selected, redirected with
# bpf_sk_assign, and iptables TPROXY. Needs root, iperf3 and iptables
# (scripts/setup.sh installs them). Flags go to bench/bpf (see -h), e.g.
#   bench/bpf/run.sh -duration 10s -pings 50000
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ $(id -u) -ne 0 ]]; then
	echo "bench/bpf: needs root (network namespaces, BPF, TPROXY)" >&2
	exit 1
fi
for c in iperf3 iptables ip; do
	command -v "$c" >/dev/null || { echo "bench/bpf: $c missing: run scripts/setup.sh" >&2; exit 1; }
done
echo "# $(date -u +%FT%TZ) $(uname -r) $(nproc) CPUs" >&2
exec go run ./bench/bpf "$@"
