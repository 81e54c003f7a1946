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
#    CPU and RSS.
# 3. The same storm at the first rate with read_coalesce 0, the setting
#    that favours enrichment of very short-lived processes over CPU.
# 4. A soak at SOAK_RATE for SOAK (procmon only) for steady RSS.
#
# Environment: RATES (default "5000 20000"), DURATION (20s), SOAK (10m,
# empty to skip), SOAK_RATE (2000), STORM_WORKERS (2).
set -eu

RATES=${RATES:-"5000 20000"}
DURATION=${DURATION:-20s}
SOAK=${SOAK-10m}
SOAK_RATE=${SOAK_RATE:-2000}
STORM_WORKERS=${STORM_WORKERS:-2}

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
go build -o "$work/vigil-procmon" ./plugins/procmon/cmd/vigil-procmon
go build -o "$work/driver" ./bench/procmon/driver
cc -O2 -Wall -o "$work/storm" "$here/storm/storm.c"
cc -O2 -static -nostdlib -o "$work/stormchild" "$here/storm/child.c"
uname -r
nproc
uptime

echo "== micro-benchmarks =="
go test -run '^$' -bench 'BenchmarkDecode' -benchtime 2s ./plugins/procmon/cnproc | grep -E '^Benchmark'
go test -run '^$' -bench 'BenchmarkReadProcess' -benchtime 3000x ./plugins/procmon/procinfo | grep -E '^Benchmark'
go test -run '^$' -bench 'BenchmarkExecEnrich' -benchtime 3000x ./plugins/procmon | grep -E '^Benchmark'

first=""
for rate in $RATES; do
	[ -n "$first" ] || first=$rate
	echo
	"$work/driver" -plugin "$work/vigil-procmon" -storm "$work/storm" -target "$work/stormchild" \
		-rate "$rate" -duration "$DURATION" -workers "$STORM_WORKERS"
done

echo
echo "-- read_coalesce 0 (no batching of socket reads) --"
"$work/driver" -plugin "$work/vigil-procmon" -storm "$work/storm" -target "$work/stormchild" \
	-rate "$first" -duration "$DURATION" -workers "$STORM_WORKERS" -config '{"read_coalesce": "0s"}'

if [ -n "$SOAK" ]; then
	echo
	echo "-- soak: $SOAK at $SOAK_RATE execs/s, procmon only --"
	"$work/driver" -plugin "$work/vigil-procmon" -storm "$work/storm" -target "$work/stormchild" \
		-rate "$SOAK_RATE" -duration "$SOAK" -workers "$STORM_WORKERS" -forkstat=false -sample 10s
fi
