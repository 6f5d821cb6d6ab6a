#!/usr/bin/env bash
# bench/tls/run.sh: TLS benchmark of issue 8, baselines in the same run.
# For ECDSA P-256 and RSA-2048: direct TLS to the upstream, Envoy SNI
# passthrough, Envoy terminate+originate with an inline (static)
# certificate, and ward interception (secrets by SDS + ward.http with one
# HTTP rule). Keep-alive req/s with h2load; new connections/s (full
# handshake, one request each). Arms are interleaved round by round; the
# table reports medians and the ratio to the static arm (target: ward >= 0.95).
# Needs build/envoy, build/libward.so (make build), openssl and h2load.
#   ROUNDS=3 D=5s C=16 bench/tls/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WARD_TLS_BENCH=1 WARD_TLS_BENCH_ROUNDS="${ROUNDS:-3}" WARD_TLS_BENCH_D="${D:-5s}" WARD_TLS_BENCH_C="${C:-16}" \
	go test -count=1 -timeout 60m -run '^TestTLSBench$' -v ./conformance/envoytls/ |
	grep -E '^(TLS,|\|)'
