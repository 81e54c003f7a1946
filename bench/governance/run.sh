#!/bin/sh
# Governance benchmarks for issue 4 (resource governance). Prints the
# figures recorded in docs/governance.md.
#
# Needs root (it creates cgroups) and taskset; run it on a quiet machine if
# you can. Takes about a minute and a half.
#
#   sh bench/governance/run.sh
set -eu
cd "$(dirname "$0")/../.."

echo "== governance overhead per sample cycle, three plugins + the host"
echo "   (core%@3s = share of one core at the default 3 s interval; target <= 0.1)"
go test -run '^$' -bench 'SampleCycle' -benchtime 2000x ./host/governor/
go test -run '^$' -bench 'ProcSample|Tree' ./host/procstat/

echo
echo "== time to trip, injected clock: a spin starting anywhere between two samples"
echo "   (target: N x interval = 12 s, within one interval)"
go test -run '^$' -bench 'BenchmarkTimeToTrip$' -benchtime 1x ./host/governor/

echo
echo "== time to trip, real clock: a real busy loop in a cgroup sized from the normal profile"
go test -run '^$' -bench 'RealTimeToTrip' -benchtime 1x ./host/governor/

echo
echo "== a CPU-bound process next to a spinner capped at 5% (target: slows by <= 6%)"
go run ./bench/governance/contention
