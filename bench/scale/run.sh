#!/bin/sh
# bench/scale/run.sh runs the control plane's standard scale measurements
# (docs/scale.md) on ONE CELL OF THREE etcd MEMBERS (each its own process:
# vigil-sim -serve-member, i.e. etcd 3.7.3 as vigil-server embeds it; data
# on /dev/shm) and writes JSON reports and a chart:
#   1. for each fleet size in SIZES: registration (spread SIZE/500 s),
#      emergency stop, resume, and the leader killed right after a stop;
#      with EXTRA=1 the largest size also measures the fleet at rest (idle:
#      lease renewal cost) and offline detection (1,000 hosts crash; with
#      TTL 60s this adds ~2 minutes); a size whose
#      registration does not complete skips its other scenarios;
#   2. partition: PART_HOSTS hosts in a network namespace cut off by a veth
#      pair while the fleet changes, then healed (needs root and ip; skipped
#      otherwise);
#   3. BenchmarkRestartWhileEtcdDown (host/control);
#   4. $OUT/scale.html: p50/p99/max against fleet size per scenario
#      (bench/scale/chart), and $OUT/*.json.
# Environment: SIZES ("1000 5000 10000 20000"), CLUSTER (3), CLIENTS (32),
# TTL (60s, see docs/scale.md "Tuning"), REQUEST_TIMEOUT (10s, the host's default),
# SETTLE (10s: the pause before each scenario after registration), PART_HOSTS
# (500), PART_TTL (15s), OUT (default a temporary directory), ETCD_BIN (run
# that etcd binary, e.g. /usr/bin/etcd, instead of the embedded version),
# RUN_TIMEOUT (600: seconds one vigil-sim run may take).
set -eu
cd "$(dirname "$0")/../.."

SIZES=${SIZES:-1000 5000 10000 20000}
CLUSTER=${CLUSTER:-3}
CLIENTS=${CLIENTS:-32}
TTL=${TTL:-60s}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-10s}
SETTLE=${SETTLE:-10s}
PART_HOSTS=${PART_HOSTS:-500}
PART_TTL=${PART_TTL:-15s}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
OUT=${OUT:-$(mktemp -d /tmp/vigil-scale.XXXXXX)}
mkdir -p "$OUT"

bin=$(mktemp /tmp/vigil-sim.XXXXXX)
trap 'rm -f "$bin"' EXIT INT TERM
go build -o "$bin" ./cmd/vigil-sim
go build -o "$bin.chart" ./bench/scale/chart
trap 'rm -f "$bin" "$bin.chart"' EXIT INT TERM

etcd_flags=""
if [ -n "${ETCD_BIN:-}" ]; then etcd_flags="-etcd-bin $ETCD_BIN"; fi

echo "== $(date -u +%FT%TZ) on $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
largest=0
for n in $SIZES; do
	if [ "$n" -gt "$largest" ]; then largest=$n; fi
done

for n in $SIZES; do
	spread=$((n / 500))s
	scen=register,stop,resume,leader-loss
	extra=""
	if [ "$n" = "$largest" ] && [ "${EXTRA:-0}" = 1 ]; then scen=$scen,idle,offline; extra="-offline 1000"; fi
	echo "== vigil-sim -hosts $n -cluster $CLUSTER -clients $CLIENTS -ttl $TTL -spread $spread -request-timeout $REQUEST_TIMEOUT -settle $SETTLE -scenarios $scen $extra $etcd_flags"
	# shellcheck disable=SC2086
	timeout -k 20 "$RUN_TIMEOUT" "$bin" -hosts "$n" -cluster "$CLUSTER" -clients "$CLIENTS" -ttl "$TTL" -spread "$spread" \
		-request-timeout "$REQUEST_TIMEOUT" -settle "$SETTLE" -scenarios "$scen" $extra $etcd_flags -json "$OUT/sim-$n.json" || status=1
done

if [ "$(id -u)" = 0 ] && command -v ip >/dev/null; then
	echo "== partition: vigil-sim -hosts 1000 -partition $PART_HOSTS -cluster $CLUSTER -ttl $PART_TTL -scenarios register,stop,partition"
	# shellcheck disable=SC2086
	timeout -k 20 "$RUN_TIMEOUT" "$bin" -hosts 1000 -partition "$PART_HOSTS" -cluster "$CLUSTER" -clients "$CLIENTS" -ttl "$PART_TTL" \
		-spread 3s -request-timeout "$REQUEST_TIMEOUT" -settle "$SETTLE" -offline 0 -scenarios register,stop,partition $etcd_flags \
		-json "$OUT/partition.json" || status=1
else
	echo "== partition: skipped (needs root and ip)"
fi

echo "== go test -run '^$' -bench BenchmarkRestartWhileEtcdDown -benchtime 5x ./host/control"
go test -run '^$' -bench BenchmarkRestartWhileEtcdDown -benchtime 5x ./host/control || status=1

# shellcheck disable=SC2046
"$bin.chart" -o "$OUT/scale.html" $(for n in $SIZES; do [ -s "$OUT/sim-$n.json" ] && echo "$OUT/sim-$n.json"; done)
echo "== $(date -u +%FT%TZ) load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== JSON reports and chart in $OUT (open $OUT/scale.html)"
exit $status
