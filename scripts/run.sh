#!/usr/bin/env bash
# make run: start Vigil on this machine from ./bin, with everything under ./run.
# Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
run="$top/run"
mkdir -p "$run"

if [ "$(id -u)" -ne 0 ]; then
  echo "note: not root. vigil-host runs, but procmon (netlink proc connector), netmon"
  echo "      (sock_diag with process attribution) and per-plugin cgroups need root: sudo make run"
fi

cat > "$run/host.yaml" <<YAML
host_name: $(hostname -s 2>/dev/null || echo dev)
labels: {env: dev, idc: local}
state_dir: $run/state
run_dir: $run
log: {level: info, file: $run/host.log, stderr: false}
heartbeat: {interval: 30s}
sinks:
  file: {path: $run/events.ndjson, max_size_mb: 64}
plugins:
  - name: example
    path: $top/bin/vigil-example
    config: {interval: 5s}
YAML

./bin/vigil-host run --config "$run/host.yaml" &
host=$!
trap 'kill -TERM $host 2>/dev/null; wait $host 2>/dev/null; echo "stopped"' EXIT INT TERM

cat <<MSG
Vigil is running (host pid $host).
  events:  $run/events.ndjson        tail -f run/events.ndjson
  status:  ./bin/vigil-host status --socket $run/host.sock
  log:     $run/host.log
  config:  $run/host.yaml
Ctrl-C stops it.
MSG
wait $host
