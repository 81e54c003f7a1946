#!/usr/bin/env bash
# make run: start Vigil on this machine from ./bin, with everything under ./run:
# vigil-server with its embedded etcd (TLS, client certificates, etcd RBAC),
# and one vigil-host registered to it running the plugins. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)
run="$top/run"
mkdir -p "$run"
root=1
if [ "$(id -u)" -ne 0 ]; then
  root=0
  echo "note: not root. The server, the host and the example plugin run; procmon (netlink"
  echo "      proc connector), netmon (sock_diag) and per-plugin cgroups need root: sudo make run"
fi

# A development CA, certificates and etcd RBAC, once.
if [ ! -f "$run/pki/ca.crt" ]; then
  ./bin/vigil-server init --dir "$run/pki" --data-dir "$run/server-data" --log-level warn
fi

# --osv: a few bundled Debian 12 advisories, so `vigilctl vuln top` shows this host's findings.
./bin/vigil-server --tls-dir "$run/pki" --data-dir "$run/server-data" --log-level warn --osv "$top/vuln/osv/sample" 2>"$run/server.log" &
server=$!
pids=$server
trap 'kill -TERM $pids 2>/dev/null; wait 2>/dev/null; echo "stopped"' EXIT INT TERM

export VIGIL_SERVER=https://127.0.0.1:8443 VIGIL_CA="$run/pki/ca.crt"
export VIGIL_CERT="$run/pki/admin.crt" VIGIL_KEY="$run/pki/admin.key"
for _ in $(seq 100); do ./bin/vigilctl server status >/dev/null 2>&1 && break; sleep 0.2; done

plugins="  - {name: example, path: $top/bin/vigil-example, config: {interval: 10s}}"
plugins="$plugins
  - {name: vulnscan, path: $top/bin/vigil-vulnscan}"
if [ "$root" = 1 ]; then
  plugins="$plugins
  - {name: procmon, path: $top/bin/vigil-procmon}
  - {name: netmon, path: $top/bin/vigil-netmon}"
fi
cat > "$run/host.yaml" <<YAML
host_name: $(hostname -s 2>/dev/null || echo dev)
labels: {env: dev, idc: local}
state_dir: $run/state
run_dir: $run/host-run
log: {level: info, file: $run/host.log, stderr: false}
heartbeat: {interval: 30s}
sinks:
  file: {path: $run/events.ndjson, max_size_mb: 64}
control:
  endpoints: [https://127.0.0.1:2379]
  ca_file: $run/pki/ca.crt
  cert_file: $run/pki/host.crt
  key_file: $run/pki/host.key
server: {url: https://127.0.0.1:8443}
plugins:
$plugins
YAML

./bin/vigil-host run --config "$run/host.yaml" &
pids="$pids $!"
for _ in $(seq 100); do ./bin/vigilctl agents count 2>/dev/null | grep -qv '^0' && break; sleep 0.2; done

cat <<MSG

Vigil is running: vigil-server (embedded etcd, API on https://127.0.0.1:8443) and one vigil-host.
  events:   tail -f run/events.ndjson
  host:     ./bin/vigil-host status --socket run/host-run/host.sock
  fleet:    export VIGIL_SERVER=$VIGIL_SERVER VIGIL_CA=$VIGIL_CA VIGIL_CERT=$VIGIL_CERT VIGIL_KEY=$VIGIL_KEY
            ./bin/vigilctl agents ls
            ./bin/vigilctl fleet stop --wait --comment "trying the emergency stop"
            ./bin/vigilctl fleet resume --wait
            echo '{"plugins":{"example":{"config":{"interval":"2s"}}}}' | ./bin/vigilctl config set --scope fleet --comment faster
            ./bin/vigilctl config history --scope fleet
  vulns:    ./bin/vigilctl vuln top; ./bin/vigilctl vuln host $(hostname -s 2>/dev/null || echo dev)
  logs:     run/host.log  run/server.log
Ctrl-C stops it.
MSG
./bin/vigilctl agents ls || true
wait
