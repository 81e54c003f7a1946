#!/usr/bin/env bash
# Self-update timings from the end-to-end test (real vigil-host binaries, real
# etcd): desired HostVersion written -> new binary running / healthy, and the
# automatic rollbacks of a crashing and of an unhealthy build.
#   bench/selfupdate/run.sh [RUNS]   (default 3; each run builds five binaries)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
printf '%-4s  %s\n' run figure
for i in $(seq "$runs"); do
  out=$(go test -count=1 -run TestSelfUpdateFromFleet -v ./cmd/vigil-host 2>&1) || { echo "$out" | tail -40; exit 1; }
  echo "$out" | sed -n 's/.*figure: /'"$i"'     /p'
done
