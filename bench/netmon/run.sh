#!/usr/bin/env bash
# Benchmark netmon against ss from iproute2 (see docs/netmon.md).
#
# Usage (as root, from anywhere):  bench/netmon/run.sh
# Environment: N (connections for the snapshot and RSS figures, default
# 100000), STEADY_N (connections for the CPU figure, default 10000), REPS
# (repetitions, default 5), TAN_REPS (alternated ss -tan / snapshot pairs
# for the median and spread, default 11), DURATION (seconds per run,
# default 60).
#
# Everything happens in a network namespace the script creates, so the
# host's own port range and sockets are untouched; the raised fd limit
# applies only to the holder process. The namespace and the holder are
# removed on exit.
set -euo pipefail

N=${N:-100000}
STEADY_N=${STEADY_N:-10000}
REPS=${REPS:-5}
TAN_REPS=${TAN_REPS:-11}
DURATION=${DURATION:-60}
NS=vigil-netmon-bench-$$
REPO=$(cd "$(dirname "$0")/../.." && pwd)
TMP=$(mktemp -d)

cleanup() {
	stop_holders
	ip netns del "$NS" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
trap "exit 130" INT TERM

in_ns() { ip netns exec "$NS" "$@"; }

echo "== building"
(cd "$REPO" && CGO_ENABLED=0 go build -o "$TMP/holder" ./bench/netmon/holder && CGO_ENABLED=0 go build -o "$TMP/snapbench" ./bench/netmon/snapbench &&
	CGO_ENABLED=0 go build -o "$TMP/vigil-netmon" ./plugins/netmon/cmd/vigil-netmon)

# netns makes a fresh namespace (so no TIME_WAIT sockets of an earlier
# phase are left in the figures).
netns() {
	ip netns del "$NS" 2>/dev/null || true
	ip netns add "$NS"
	in_ns ip link set lo up
	# The holders' listeners sit below the ephemeral range, so their
	# outgoing connections never take a port another holder has yet to
	# bind (which happened under load with the range starting at 1024).
	in_ns sysctl -q -w net.ipv4.ip_local_port_range="10000 65535"
	in_ns sysctl -q -w net.core.somaxconn=65535
	echo "== network namespace $NS (port range 10000-65535 inside it only)"
}

# hold starts holders for $1 connections in all and waits until they are
# up. This machine caps open files per process at the hard limit (no
# CAP_SYS_RESOURCE to raise it), so the connections are spread over
# several holder processes of at most PER_HOLDER connections (2 fds each).
PER_HOLDER=${PER_HOLDER:-$(( ($(ulimit -Hn) - 100) / 2 ))}
HOLDER_PIDS=()
stop_holders() {
	exec 8>&-
	for p in "${HOLDER_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	HOLDER_PIDS=()
}
hold() {
	stop_holders
	local total=$1 left=$1 i=0 n
	local -a counts=()
	rm -f "$TMP"/in "$TMP"/out.*
	mkfifo "$TMP/in"
	ulimit -n "$(ulimit -Hn)"
	while (( left > 0 )); do
		n=$(( left < PER_HOLDER ? left : PER_HOLDER ))
		counts+=("$n")
		left=$(( left - n )); i=$(( i + 1 ))
	done
	spawn() { # spawn INDEX: (re)starts holder INDEX
		ip netns exec "$NS" "$TMP/holder" -n "${counts[$1]}" -base $(( 2001 + 10 * $1 )) <"$TMP/in" >"$TMP/out.$1" &
		HOLDER_PIDS[$1]=$!
	}
	for (( j = 0; j < i; j++ )); do spawn "$j"; done
	exec 8>"$TMP/in"   # keeps the holders' stdin open
	# Other engineers' jobs on this machine have been seen to kill stray
	# processes; a holder that dies before it is ready is started again.
	local ready deadline=$(( SECONDS + 900 ))
	while :; do
		ready=0
		for (( j = 0; j < i; j++ )); do
			if grep -q ready "$TMP/out.$j" 2>/dev/null; then
				ready=$(( ready + 1 ))
			elif ! kill -0 "${HOLDER_PIDS[$j]}" 2>/dev/null; then
				echo "holder $j died before it was ready; starting it again" >&2
				spawn "$j"
			fi
		done
		(( ready == i )) && break
		if (( SECONDS > deadline )); then echo "holders not ready after 15 minutes" >&2; exit 1; fi
		sleep 1
	done
	echo "holders: $i processes holding $total connections"
}

echo "== machine"
echo "$(nproc) cores, $(uname -r), $(ss -V), load: $(cut -d' ' -f1-3 /proc/loadavg)"

netns
hold "$N"
echo "== snapshot time at $N connections ($((2 * N)) established sockets on loopback), load $(cut -d' ' -f1-3 /proc/loadavg)"
in_ns "$TMP/snapbench" -mode tan -reps "$TAN_REPS"
in_ns "$TMP/snapbench" -mode compare -reps "$REPS"
echo "== vigil-netmon plugin process at $N connections, default config, ${DURATION}s (RSS)"
in_ns "$TMP/snapbench" -mode plugin -plugin "$TMP/vigil-netmon" -duration "${DURATION}s" -interval 5s
echo "== in-process loop at $N connections, budget lifted so every snapshot is whole, ${DURATION}s"
in_ns "$TMP/snapbench" -mode run -duration "${DURATION}s" -interval 5s -budget 1m

stop_holders
netns
hold "$STEADY_N"
echo "== vigil-netmon plugin process at $STEADY_N connections, default config (5s interval), ${DURATION}s (steady CPU)"
in_ns "$TMP/snapbench" -mode plugin -plugin "$TMP/vigil-netmon" -duration "${DURATION}s" -interval 5s
echo "== in-process loop at $STEADY_N connections, ${DURATION}s (per-snapshot CPU)"
in_ns "$TMP/snapbench" -mode run -duration "${DURATION}s" -interval 5s
stop_holders
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
