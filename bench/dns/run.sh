#!/usr/bin/env bash
# bench/dns/run.sh: dnsperf against unbound directly, a minimal miekg/dns
# forwarder (the baseline), ward's DNS proxy with allow-all, with 100
# matchPattern rules, and with toFQDNs ipcache updates on every answer
# (rotating IPs; baseline: the forwarder in front of the same rotating
# server). Everything on loopback, baselines in the same run.
#
#   bench/dns/run.sh            # DURATION=10 CLIENTS=20 OUTSTANDING=100
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-20}
OUTSTANDING=${OUTSTANDING:-100}
for c in unbound dnsperf dig go; do
	command -v "$c" >/dev/null || { echo "missing $c: run scripts/setup.sh" >&2; exit 1; }
done
TMP=$(mktemp -d)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT

go build -o "$TMP/dnsbench" ./bench/dns/dnsbench

free_port() { "$TMP/dnsbench" -mode freeport; }

wait_ready() { # port name
	for _ in $(seq 100); do
		if dig @127.0.0.1 -p "$1" "$2" +tries=1 +time=1 +short >/dev/null 2>&1 &&
			[[ -n "$(dig @127.0.0.1 -p "$1" "$2" +tries=1 +time=1 +short)" ]]; then return 0; fi
		sleep 0.1
	done
	echo "server on port $1 not ready" >&2
	exit 1
}

UB_PORT=$(free_port)
cat >"$TMP/zone" <<ZONE
\$ORIGIN github.test.
\$TTL 60
@       IN SOA ns.github.test. admin.github.test. 1 3600 600 86400 60
@       IN NS  ns.github.test.
ns      IN A   192.0.2.53
api     IN A   192.0.2.1
api     IN A   192.0.2.2
support IN A   192.0.2.10
ZONE
cat >"$TMP/unbound.conf" <<CONF
server:
  interface: 127.0.0.1@$UB_PORT
  port: $UB_PORT
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$TMP"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  num-threads: 1
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  local-zone: "test." nodefault
  local-zone: "github.test." nodefault
auth-zone:
  name: "github.test."
  zonefile: "$TMP/zone"
  for-downstream: yes
  for-upstream: yes
remote-control:
  control-enable: no
CONF
unbound -d -c "$TMP/unbound.conf" >"$TMP/unbound.log" 2>&1 &
PIDS+=($!)
wait_ready "$UB_PORT" api.github.test

printf 'api.github.test A\nsupport.github.test A\n' >"$TMP/queries"

# perf PORT: prints "qps avg_latency_ms"
perf() {
	dnsperf -s 127.0.0.1 -p "$1" -d "$TMP/queries" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" >"$TMP/perf.out" 2>&1 || true
	local qps lat lost
	qps=$(awk '/Queries per second:/ {print $4}' "$TMP/perf.out")
	lat=$(awk '/Average Latency \(s\):/ {printf "%.3f", $4*1000}' "$TMP/perf.out")
	lost=$(awk '/Queries lost:/ {print $3}' "$TMP/perf.out")
	echo "${qps:-0} ${lat:-?} ${lost:-?}"
}

# start_bench ARGS...: runs dnsbench on a free port, sets PORT and BPID.
start_bench() {
	PORT=$(free_port)
	"$TMP/dnsbench" -listen "127.0.0.1:$PORT" "$@" 2>"$TMP/bench-$PORT.err" &
	BPID=$!
	PIDS+=("$BPID")
	wait_ready "$PORT" api.github.test
}
stop_bench() {
	kill -TERM "$BPID"
	wait "$BPID" 2>/dev/null || true
	grep -h ward-stats "$TMP/bench-$PORT.err" | sed "s/^ward-stats /  ${1:-ward}: /" || true
}

declare -A QPS LAT LOST
row() { read -r QPS[$1] LAT[$1] LOST[$1] <<<"$2"; }

echo "dnsperf: ${DURATION}s, ${CLIENTS} clients, ${OUTSTANDING} outstanding, $(nproc) cores" >&2
row unbound "$(perf "$UB_PORT")"

start_bench -mode forwarder -upstream "127.0.0.1:$UB_PORT"; row forwarder "$(perf "$PORT")"; stop_bench
start_bench -mode ward -upstream "127.0.0.1:$UB_PORT"; row allowall "$(perf "$PORT")"; stop_bench allow-all >&2
start_bench -mode ward -upstream "127.0.0.1:$UB_PORT" -patterns 100; row patterns "$(perf "$PORT")"; stop_bench 100-patterns >&2

# Rotating IPs: a fresh IP in every answer.
RPORT=$(free_port)
"$TMP/dnsbench" -mode rotating -listen "127.0.0.1:$RPORT" 2>/dev/null &
PIDS+=($!)
wait_ready "$RPORT" api.github.test
start_bench -mode forwarder -upstream "127.0.0.1:$RPORT"; row rotfwd "$(perf "$PORT")"; stop_bench
start_bench -mode ward -upstream "127.0.0.1:$RPORT" -selectors; row tofqdns "$(perf "$PORT")"
stop_bench toFQDNs >"$TMP/tofqdns-stats" # not in $(…): wait needs the job in this shell
STATS=$(cat "$TMP/tofqdns-stats")
echo "$STATS" >&2

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
printf '\n| setup | qps | avg latency (ms) | lost | vs baseline |\n|---|---:|---:|---:|---:|\n'
printf '| unbound directly | %.0f | %s | %s | %s |\n' "${QPS[unbound]}" "${LAT[unbound]}" "${LOST[unbound]}" "-"
printf '| miekg forwarder (baseline) | %.0f | %s | %s | 1.00 |\n' "${QPS[forwarder]}" "${LAT[forwarder]}" "${LOST[forwarder]}"
printf '| ward, allow-all | %.0f | %s | %s | %s |\n' "${QPS[allowall]}" "${LAT[allowall]}" "${LOST[allowall]}" "$(ratio "${QPS[allowall]}" "${QPS[forwarder]}")"
printf '| ward, 100 matchPattern rules | %.0f | %s | %s | %s |\n' "${QPS[patterns]}" "${LAT[patterns]}" "${LOST[patterns]}" "$(ratio "${QPS[patterns]}" "${QPS[forwarder]}")"
printf '| miekg forwarder, rotating-IP upstream (baseline) | %.0f | %s | %s | 1.00 |\n' "${QPS[rotfwd]}" "${LAT[rotfwd]}" "${LOST[rotfwd]}"
printf '| ward, toFQDNs update on every answer | %.0f | %s | %s | %s |\n' "${QPS[tofqdns]}" "${LAT[tofqdns]}" "${LOST[tofqdns]}" "$(ratio "${QPS[tofqdns]}" "${QPS[rotfwd]}")"
echo
echo "toFQDNs row, ward's own counters (update_wait = answer held for ipcache+policy):"
echo "$STATS"
