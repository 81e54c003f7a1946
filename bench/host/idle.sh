#!/usr/bin/env bash
# Idle footprint of vigil-host with the example plugin: RSS after WARM
# seconds, then CPU over the next WINDOW seconds, for the host and the plugin.
# Targets (Foundation issue): host RSS <= 12 MB, example plugin <= 10 MB after
# 60 s; host CPU at idle <= 0.2% of one core.
# Usage: bench/host/idle.sh [WARM=60] [WINDOW=60]   (run from the repo root)
set -euo pipefail
cd "$(dirname "$0")/../.."
warm=${1:-60}
window=${2:-60}
make build >/dev/null
dir=$(mktemp -d)
trap 'kill $host 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
cat > "$dir/host.yaml" <<YAML
host_name: bench
state_dir: $dir/state
run_dir: $dir/run
log: {level: info, file: $dir/host.log, stderr: false}
sinks: {file: {path: $dir/events.ndjson}}
plugins:
  - {name: example, path: $PWD/bin/vigil-example}
YAML
./bin/vigil-host run -c "$dir/host.yaml" &
host=$!
sleep "$warm"
plugin=$(pgrep -P "$host" -f vigil-example)
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/status"; }
printf '%-10s %10s %10s %10s\n' process rss_kB anon_kB file_kB
for p in host:$host example:$plugin; do
  pid=${p#*:}
  printf '%-10s %10s %10s %10s\n' "${p%%:*}" "$(kb "$pid" VmRSS)" "$(kb "$pid" RssAnon)" "$(kb "$pid" RssFile)"
done
h0=$(ticks "$host"); p0=$(ticks "$plugin"); t0=$(date +%s.%N)
sleep "$window"
h1=$(ticks "$host"); p1=$(ticks "$plugin"); t1=$(date +%s.%N)
awk -v h=$((h1-h0)) -v p=$((p1-p0)) -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN {
  dt = t1 - t0
  printf "cpu over %.0fs: host %.3f%% of one core, example %.3f%% of one core\n", dt, 100*h/hz/dt, 100*p/hz/dt
}'
