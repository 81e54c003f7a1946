#!/bin/sh
# bench/scale/run.sh runs the control plane's standard scale measurements
# (docs/scale.md) and prints their tables:
#   1. vigil-sim, 10,000 hosts over 16 etcd connections against etcd 3.7.3
#      (the version vigil-server embeds) run by a second vigil-sim process
#      (-serve-etcd), so that etcd has its own Go runtime as on a real
#      server: registration, emergency stop and resume (twice), per-host
#      config push, offline detection;
#   2. BenchmarkRestartWhileEtcdDown: a host restarting while etcd is down
#      hands its persisted state to the supervisor.
# Environment: HOSTS (10000), CLIENTS (16), TTL (15s), SPREAD (20s),
# DATA_DIR (etcd data; default a fresh directory on /dev/shm, see
# docs/scale.md), OUT (directory for the JSON reports; default a temporary
# directory), STORM=1 adds a registration storm without spread.
set -eu
cd "$(dirname "$0")/../.."

HOSTS=${HOSTS:-10000}
CLIENTS=${CLIENTS:-16}
TTL=${TTL:-15s}
SPREAD=${SPREAD:-20s}
OUT=${OUT:-$(mktemp -d /tmp/vigil-scale.XXXXXX)}
mkdir -p "$OUT"

bin=$(mktemp /tmp/vigil-sim.XXXXXX)
data=
etcd_pid=
cleanup() {
	if [ -n "$etcd_pid" ]; then kill "$etcd_pid" 2>/dev/null || true; wait "$etcd_pid" 2>/dev/null || true; fi
	rm -f "$bin" "$bin.url"
	if [ -n "$data" ]; then rm -rf "$data"; fi
}
trap cleanup EXIT INT TERM
go build -o "$bin" ./cmd/vigil-sim

fresh_data() {
	if [ -n "${DATA_DIR:-}" ]; then
		data=$DATA_DIR/vigil-sim-$$-$1
	elif [ -d /dev/shm ]; then
		data=/dev/shm/vigil-sim-$$-$1
	else
		data=$(mktemp -d /tmp/vigil-sim-data.XXXXXX)/etcd
	fi
	rm -rf "$data"
}

echo "== $(date -u +%FT%TZ) on $(nproc) cores, load average: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0

# start_etcd runs etcd in its own vigil-sim process and sets $url.
start_etcd() {
	fresh_data "$1"
	rm -f "$bin.url"
	"$bin" -serve-etcd "$bin.url" -data-dir "$data" &
	etcd_pid=$!
	i=0
	while [ ! -s "$bin.url" ]; do
		i=$((i + 1))
		if [ $i -gt 300 ]; then echo "etcd did not start" >&2; exit 1; fi
		sleep 0.1
	done
	url=$(cat "$bin.url")
}
stop_etcd() {
	kill "$etcd_pid"
	wait "$etcd_pid" || true
	etcd_pid=
	rm -rf "$data"
}

start_etcd standard
echo "== vigil-sim -hosts $HOSTS -clients $CLIENTS -ttl $TTL -spread $SPREAD -scenarios register,stop,resume,stop,resume,push,offline"
"$bin" -hosts "$HOSTS" -clients "$CLIENTS" -ttl "$TTL" -spread "$SPREAD" -endpoints "$url" \
	-scenarios register,stop,resume,stop,resume,push,offline -json "$OUT/sim.json" || status=1
stop_etcd

if [ "${STORM:-0}" = 1 ]; then
	start_etcd storm
	echo "== registration storm: vigil-sim -hosts $HOSTS -clients $CLIENTS -ttl $TTL -spread 0 -scenarios register,stop"
	"$bin" -hosts "$HOSTS" -clients "$CLIENTS" -ttl "$TTL" -spread 0 -endpoints "$url" \
		-scenarios register,stop -json "$OUT/storm.json" || true
	stop_etcd
fi

echo "== go test -run '^$' -bench BenchmarkRestartWhileEtcdDown -benchtime 5x ./host/control"
go test -run '^$' -bench BenchmarkRestartWhileEtcdDown -benchtime 5x ./host/control || status=1

echo "== JSON reports in $OUT"
exit $status
