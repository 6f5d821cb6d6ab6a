#!/usr/bin/env bash
# Kubernetes scale benchmark (issue 15): a real kube-apiserver with 5,000
# pods and 1,000 CiliumNetworkPolicies, one node's wardd (BPF + Envoy):
# initial sync, policy edit and pod label change until BPF is written and
# Envoy acknowledged (p50/p99), wardd's RSS. Table in
# bench/results/kube.md. Needs root and `make setup` (etcd,
# kube-apiserver, Envoy).
#   WARD_KUBE_BENCH_PODS=N WARD_KUBE_BENCH_POLICIES=N WARD_KUBE_BENCH_CHANGES=N
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
WARD_KUBE_BENCH=1 WARD_KUBE_BENCH_OUT="$ROOT/bench/results/kube.md" \
	go test -count=1 -timeout 30m -run '^TestKubeScale$' -v ./bench/kube/ | grep -v -e '^=== RUN' -e '^\s*\[20'
echo "table: $ROOT/bench/results/kube.md"
