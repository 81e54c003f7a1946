#!/bin/sh
# Benchmarks of procmon, run as root from the repository root:
#
#   bench/procmon/run.sh
#
# 1. Parser and enrichment micro-benchmarks (go test -bench): allocations
#    per event and events per second.
# 2. For each rate in RATES, one exec storm watched by procmon (the real
#    vigil-procmon binary, driven over go-plugin as vigil-host drives it) and
#    forkstat at the same time: capture, loss accounting, command-line share,
#    CPU and RSS. A rate of FILL_FROM or more is beyond what 2 vCPUs can
#    exec (about 14,000/s with nothing listening): the storm then runs as
#    fast as the machine lets it, and a FILLER process (comm changes,
#    prctl(PR_SET_NAME): one message each) brings the proc connector's
#    messages up to the 3 x rate per second (fork, exec, exit) such a
#    storm would send. That is the message load of the rate, not an exec
#    storm at the rate.
# 3. The same storm at the first rate with read_coalesce 0, the setting
#    that favours enrichment of very short-lived processes over CPU.
# 4. A storm of a dynamically linked /bin/true copy at DYN_RATE, a child
#    that lives about a millisecond like real short commands, in both modes.
# 4b. A storm at LOW_RATE (default 1000/s), where reads find too few
#    messages to pause after them, by default and with
#    read_coalesce_after 3 (pause after every process's messages).
# 5. An overload run: a 128 KiB socket buffer, one worker, a 1024-event
#    queue and 50 ms pauses between reads, so events are lost on purpose and
#    the loss counters can be checked against the generated execs.
# 6. A soak at SOAK_RATE for SOAK (procmon only) for steady RSS.
#
# Environment: RATES (default "5000 20000"), DURATION (20s), DYN_RATE
# (1000), LOW_RATE (1000), SOAK (10m, empty to skip), SOAK_RATE (5000),
# STORM_WORKERS (2, each pinned to a CPU), FILL_FROM (10000), FILLER
# (comm; proc or thread; empty: never fill), ONLY (run only the named
# parts: micro rates coalesce dyn low overload soak), PPROF (a directory: build the plugin with the
# pprof tag and have it write cpu.pprof, heap.pprof and memstats.txt there;
# each storm overwrites them).
set -eu

RATES=${RATES:-"5000 20000"}
DURATION=${DURATION:-20s}
SOAK=${SOAK-10m}
SOAK_RATE=${SOAK_RATE:-5000}
DYN_RATE=${DYN_RATE:-1000}
LOW_RATE=${LOW_RATE:-1000}
ONLY=${ONLY:-"micro rates coalesce dyn low overload soak"}
PPROF=${PPROF:-}
want() { case " $ONLY " in *" $1 "*) return 0 ;; esac; return 1; }
STORM_WORKERS=${STORM_WORKERS:-2}
FILL_FROM=${FILL_FROM:-10000}
FILLER=${FILLER-comm}

if [ "$(id -u)" != 0 ]; then
	echo "run.sh needs root (the proc connector needs CAP_NET_ADMIN)" >&2
	exit 1
fi
command -v forkstat >/dev/null || { echo "forkstat is not installed (apt-get install forkstat)" >&2; exit 1; }

here=$(cd "$(dirname "$0")" && pwd)
# Not under /tmp: a binary run from a world-writable directory would raise
# procmon alerts, which are not what is measured here.
work=$(mktemp -d /run/vigil-procmon-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
chmod 755 "$work"

echo "== build =="
if [ -n "$PPROF" ]; then
	mkdir -p "$PPROF"
	export VIGIL_PROCMON_PPROF="$PPROF"
	go build -tags pprof -o "$work/vigil-procmon" ./plugins/procmon/cmd/vigil-procmon
else
	go build -o "$work/vigil-procmon" ./plugins/procmon/cmd/vigil-procmon
fi
go build -o "$work/driver" ./bench/procmon/driver
cc -O2 -Wall -pthread -o "$work/storm" "$here/storm/storm.c"
cc -O2 -static -nostdlib -o "$work/stormchild" "$here/storm/child.c"
cp /bin/true "$work/dyntrue"
drive() { echo "load: $(cut -d" " -f1-3 /proc/loadavg)"; "$work/driver" -plugin "$work/vigil-procmon" -storm "$work/storm" -workers "$STORM_WORKERS" "$@"; }
uname -r
nproc
uptime

if want micro; then
	echo "== micro-benchmarks =="
	go test -run '^$' -bench 'BenchmarkDecode' -benchtime 2s ./plugins/procmon/cnproc | grep -E '^Benchmark'
	go test -run '^$' -bench 'BenchmarkReadProcess' -benchtime 3000x ./plugins/procmon/procinfo | grep -E '^Benchmark'
	go test -run '^$' -bench 'BenchmarkExecEnrich' -benchtime 3000x ./plugins/procmon | grep -E '^Benchmark'
fi

first=${RATES%% *}
if want rates; then
	for rate in $RATES; do
		echo
		if [ -n "$FILLER" ] && [ "$rate" -ge "$FILL_FROM" ]; then
			drive -target "$work/stormchild" -rate "$rate" -duration "$DURATION" \
				-messages $((3 * rate)) -filler "$FILLER"
		else
			drive -target "$work/stormchild" -rate "$rate" -duration "$DURATION"
		fi
	done
fi
if want coalesce; then
	echo
	drive -target "$work/stormchild" -rate "$first" -duration "$DURATION" -config '{"read_coalesce": "0s"}'
fi
if want dyn; then
	echo
	drive -target "$work/dyntrue" -rate "$DYN_RATE" -duration "$DURATION"
	echo
	drive -target "$work/dyntrue" -rate "$DYN_RATE" -duration "$DURATION" -config '{"read_coalesce": "0s"}'
fi
if want low; then
	echo
	drive -target "$work/stormchild" -rate "$LOW_RATE" -duration "$DURATION"
	echo
	drive -target "$work/stormchild" -rate "$LOW_RATE" -duration "$DURATION" -config '{"read_coalesce_after": 3}'
fi
if want overload; then
	echo
	drive -target "$work/stormchild" -rate "$first" -duration "$DURATION" -forkstat=false \
		-config '{"receive_buffer": 65536, "workers": 1, "queue_size": 1024, "read_coalesce": "50ms"}'
fi
if want soak && [ -n "$SOAK" ]; then
	echo
	echo "-- soak: $SOAK at $SOAK_RATE execs/s, procmon only --"
	drive -target "$work/stormchild" -rate "$SOAK_RATE" -duration "$SOAK" -forkstat=false -sample 10s
fi
