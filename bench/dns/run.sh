#!/usr/bin/env bash
# bench/dns/run.sh: dnsperf against unbound directly, a minimal miekg/dns
# forwarder (the baseline), ward's DNS proxy with allow-all, with 100
# matchPattern rules, and with toFQDNs ipcache updates on every answer
# (rotating IPs; baseline: the forwarder in front of the same rotating
# server). Everything on loopback, baselines in the same run, arms
# interleaved round by round; besides qps it reports each proxy's CPU time
# per query (utime+stime of its process over the dnsperf run ÷ completed
# queries) and queries per core-second (issue 17's headline figures).
#
#   bench/dns/run.sh            # ROUNDS=3 DURATION=10 CLIENTS=20 OUTSTANDING=100
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
UB_PID=$!
PIDS+=("$UB_PID")
wait_ready "$UB_PORT" api.github.test

printf 'api.github.test A\nsupport.github.test A\n' >"$TMP/queries"

TICK=$(getconf CLK_TCK)
# cpu PID: the process's utime+stime in clock ticks (/proc/PID/stat
# fields 14 and 15; dnsbench's command name has no spaces).
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# perf PORT PID: one dnsperf run; prints "qps avg_latency_ms lost us_per_query"
# where the last is the CPU time of process PID (the proxy) per completed
# query.
perf() {
	local c0 c1
	c0=$(cpu "$2")
	dnsperf -s 127.0.0.1 -p "$1" -d "$TMP/queries" -l "$DURATION" -c "$CLIENTS" -q "$OUTSTANDING" >"$TMP/perf.out" 2>&1 || true
	c1=$(cpu "$2")
	awk -v c="$((c1 - c0))" -v tick="$TICK" '
		/Queries per second:/ { qps = $4 }
		/Average Latency \(s\):/ { lat = sprintf("%.3f", $4 * 1000) }
		/Queries lost:/ { lost = $3 }
		/Queries completed:/ { done = $3 }
		END {
			if (lat == "") lat = "?"
			if (lost == "") lost = "?"
			us = "-"
			if (done + 0 > 0) us = sprintf("%.2f", c / tick * 1e6 / done)
			printf "%s %s %s %s\n", qps + 0, lat, lost, us
		}' "$TMP/perf.out"
}

# start_bench NAME ARGS...: runs dnsbench on a free port; PORT[NAME], PID[NAME].
declare -A PORT PID
start_bench() {
	local name=$1
	shift
	PORT[$name]=$(free_port)
	"$TMP/dnsbench" -listen "127.0.0.1:${PORT[$name]}" "$@" 2>"$TMP/bench-$name.err" &
	PID[$name]=$!
	PIDS+=("$!")
	wait_ready "${PORT[$name]}" api.github.test
}
stop_bench() { # NAME LABEL
	kill -TERM "${PID[$1]}"
	wait "${PID[$1]}" 2>/dev/null || true
	grep -h ward-stats "$TMP/bench-$1.err" | sed "s/^ward-stats /  $2: /" || true
}

# Every server runs for the whole bench (idle when not measured); the arms
# are interleaved round by round, each round in the same order.
ROUNDS=${ROUNDS:-3}
RPORT=$(free_port)
"$TMP/dnsbench" -mode rotating -listen "127.0.0.1:$RPORT" 2>/dev/null &
PIDS+=($!)
wait_ready "$RPORT" api.github.test
start_bench forwarder -mode forwarder -upstream "127.0.0.1:$UB_PORT"
start_bench allowall -mode ward -upstream "127.0.0.1:$UB_PORT"
start_bench patterns -mode ward -upstream "127.0.0.1:$UB_PORT" -patterns 100
start_bench rotfwd -mode forwarder -upstream "127.0.0.1:$RPORT"
start_bench tofqdns -mode ward -upstream "127.0.0.1:$RPORT" -selectors
ARMS=(forwarder allowall patterns rotfwd tofqdns)

declare -A QPS LAT LOST US
echo "dnsperf: ${DURATION}s, ${CLIENTS} clients, ${OUTSTANDING} outstanding, $(nproc) cores, $ROUNDS interleaved rounds" >&2
for ((r = 0; r < ROUNDS; r++)); do
	read -r q l o _ <<<"$(perf "$UB_PORT" "$UB_PID")"
	QPS[unbound]+="$q " LAT[unbound]+="$l " LOST[unbound]+="$o "
	for a in "${ARMS[@]}"; do
		read -r q l o u <<<"$(perf "${PORT[$a]}" "${PID[$a]}")"
		QPS[$a]+="$q " LAT[$a]+="$l " LOST[$a]+="$o " US[$a]+="$u "
	done
done
for a in allowall patterns; do stop_bench "$a" "$a" >&2; done
stop_bench tofqdns toFQDNs >"$TMP/tofqdns-stats" # not in $(…): wait needs the job in this shell
STATS=$(cat "$TMP/tofqdns-stats")
echo "$STATS" >&2

med() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }
spread() { # values...: median [min–max]
	tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR] = $1} END { if (NR) printf "%s [%s–%s]", v[int((NR + 1) / 2)], v[1], v[NR]; else print "-" }'
}
# ratios A B: per-round A/B, median [min–max]
ratios() {
	paste <(tr ' ' '\n' <<<"$1" | grep -v '^$') <(tr ' ' '\n' <<<"$2" | grep -v '^$') |
		awk '$2 > 0 { printf "%.2f\n", $1 / $2 }' | spread
}
perCore() { tr ' ' '\n' | grep -v '^$' | awk '$1 > 0 { printf "%.0f\n", 1e6 / $1 }' | spread; }
printf '\n| setup | qps | avg latency (ms) | lost | proxy CPU µs/query | vs baseline | queries per core-second | qps vs baseline |\n|---|---:|---:|---:|---:|---:|---:|---:|\n'
printf '| unbound directly | %s | %s | %s | - | - | - | - |\n' "$(med <<<"${QPS[unbound]}")" "$(med <<<"${LAT[unbound]}")" "$(med <<<"${LOST[unbound]}")"
line() { # arm label baseline
	printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$2" "$(med <<<"${QPS[$1]}")" "$(med <<<"${LAT[$1]}")" "$(med <<<"${LOST[$1]}")" \
		"$(spread <<<"${US[$1]}")" "$(ratios "${US[$1]}" "${US[$3]}")" "$(perCore <<<"${US[$1]}")" "$(ratios "${QPS[$1]}" "${QPS[$3]}")"
}
line forwarder "miekg forwarder (baseline)" forwarder
line allowall "ward, allow-all" forwarder
line patterns "ward, 100 matchPattern rules" forwarder
line rotfwd "miekg forwarder, rotating-IP upstream (baseline)" rotfwd
line tofqdns "ward, toFQDNs update on every answer" rotfwd
echo
echo "Targets (issue 17): ward ≤ 1.25× the forwarder's CPU per query; ≥ 15k queries per core-second of the proxy."
echo
echo "toFQDNs row, ward's own counters (update_wait = answer held for ipcache+policy):"
echo "$STATS"
