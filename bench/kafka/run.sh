#!/usr/bin/env bash
# Kafka producer benchmark: org.apache.kafka.tools.ProducerPerformance
# (acks=1, 1 KB and 100 B records) straight to a real Kafka broker and
# through the official Envoy (tcp_proxy alone, and with libward.so's
# ward.kafka filter with 10 and 100 topic rules) and through ward's Kafka
# parser (proxylib.Stream + filters/kafka in a Go
# proxy) with 10 and 100 topic rules, baselines in the same run. The table
# goes to bench/results/kafka.md. Needs `make setup` (Kafka jars, java).
#   WARD_KAFKA_PERF_RECORDS=N  records per run (default 100000)
#   WARD_KAFKA_PERF_ROUNDS=N   interleaved rounds, median reported (default 3)
# Then Envoy's CPU time per record (issue 17), tcp_proxy vs ward.kafka with
# 10 rules (bench/kafka/cpu_test.go), table in bench/results/kafka-cpu.md:
#   WARD_KAFKA_CPU_RECORDS=N   records per run (default 200000)
#   WARD_KAFKA_CPU_ROUNDS=N    interleaved rounds (default 5)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export WARD_KAFKA_PERF=1
export WARD_KAFKA_PERF_OUT="$ROOT/bench/results/kafka.md"
go test -count=1 -timeout 30m -run '^TestProducerPerf$' -v ./conformance/kafka/ | grep -v '^=== RUN'
echo "table: $WARD_KAFKA_PERF_OUT"
WARD_KAFKA_CPU=1 WARD_KAFKA_CPU_OUT="$ROOT/bench/results/kafka-cpu.md" \
	go test -count=1 -timeout 30m -run '^TestKafkaCPU$' -v ./bench/kafka/ | grep -v '^=== RUN'
echo "table: $ROOT/bench/results/kafka-cpu.md"
