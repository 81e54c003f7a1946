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

# A throwaway release key for the signed example release below (kept in
# run/release so later runs trust what earlier runs published). Every step of
# the example release is optional: a failure is printed and make run goes on.
rel="$run/release"
mkdir -p "$rel"
: >"$rel/release.log"
try() { # try WHAT CMD...: run CMD, log its output, say what failed
  local what=$1; shift
  if ! "$@" >>"$rel/release.log" 2>&1; then
    echo "note: signed example release: $what failed (see run/release/release.log); make run goes on without it"
    return 1
  fi
}
# The host pins only the root key; the release key reaches it in a keyring the
# root signs, published to the fleet (a rotation is a new keyring: docs/update.md).
# The serial is the time, so each run's keyring is newer than the last.
update_section=""
if { [ -f "$rel/root.key" ] || try "vigil-sign keygen (root)" ./bin/vigil-sign keygen -W -p "$rel/root.pub" -s "$rel/root.key"; } &&
   { [ -f "$rel/release.key" ] || try "vigil-sign keygen" ./bin/vigil-sign keygen -W -p "$rel/release.pub" -s "$rel/release.key"; } &&
   try "vigil-sign trust (roots)" ./bin/vigil-sign trust -k 1 --out "$rel/roots.json" "$rel/root.pub" &&
   try "vigil-sign keyring create" ./bin/vigil-sign keyring create --serial "$(date +%s)" --expires 720h "$rel/keyring.json" "$rel/release.pub" &&
   try "vigil-sign keyring sign" ./bin/vigil-sign keyring sign -s "$rel/root.key" "$rel/keyring.json" &&
   try "vigilctl keyring publish" ./bin/vigilctl keyring publish "$rel/keyring.json"; then
  update_section="update: {roots_file: $rel/roots.json, keyring_file: $rel/keyring.json}"
fi

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
  server: {}   # the fleet's copy: run/server-data/events/events.ndjson
control:
  endpoints: [https://127.0.0.1:2379]
  ca_file: $run/pki/ca.crt
  cert_file: $run/pki/host.crt
  key_file: $run/pki/host.key
server: {url: https://127.0.0.1:8443}
$update_section
plugins:
$plugins
YAML

./bin/vigil-host run --config "$run/host.yaml" &
pids="$pids $!"
for _ in $(seq 100); do ./bin/vigilctl agents count 2>/dev/null | grep -qv '^0' && break; sleep 0.2; done

# The signed example release: plugins/example built as 1.1.0, bundled and
# signed with the throwaway key, published, and rolled out to the fleet; the
# host verifies, installs and health-gates it (docs/self-update.md).
example_release() {
  local v=1.1.0 b="$rel/example-1.1.0"
  [ -n "$update_section" ] || return 1
  # One manifest per platform (docs/releases.md): look for this machine's.
  if ! ./bin/vigilctl release ls example 2>/dev/null |
      grep -q "^example  *$v  *$("${GO:-go}" env GOOS)/$("${GO:-go}" env GOARCH) "; then
    rm -rf "$b" "$rel/vigil-example-$v"
    try "building the example plugin $v" env CGO_ENABLED=0 "${GO:-go}" build -trimpath \
        -ldflags "-s -w -X github.com/vigil-hids/vigil/plugins/example.Version=$v" \
        -o "$rel/vigil-example-$v" ./plugins/example/cmd/vigil-example &&
    try "vigil-sign sign" ./bin/vigil-sign sign -s "$rel/release.key" --binary "$rel/vigil-example-$v" \
        --plugin example --version "$v" --os "$("${GO:-go}" env GOOS)" --arch "$("${GO:-go}" env GOARCH)" \
        --min-host-version 0.0.0 --expires 720h "$b" &&
    try "vigilctl release publish" ./bin/vigilctl release publish "$b" || return 1
  fi
  try "vigilctl rollout set" ./bin/vigilctl rollout set example "$v" --scope fleet --comment "make run: signed example release" || return 1
  echo
  echo "Signed example release: example $v published and rolled out to the fleet; the host verifies,"
  echo "downloads and starts it, then keeps it once it ran its health window (update.health_window, 30s):"
  for _ in $(seq 120); do # until the host runs it, or says why not
    ./bin/vigilctl rollout status example 2>/dev/null |
      awk -v v="$v" '/^RUNNING/{f=1; next} /^$/{f=0} f && $1==v {ok=1} /^(refused|failed|rolled-back) /{ok=1} END{exit !ok}' && break
    sleep 0.5
  done
  ./bin/vigilctl rollout status example || true
}
example_release || echo "note: no signed example release this time (see run/release/release.log)"

cat <<MSG

Vigil is running: vigil-server (embedded etcd, API on https://127.0.0.1:8443) and one vigil-host.
  events:   tail -f run/events.ndjson   (the server's copy: run/server-data/events/events.ndjson)
  host:     ./bin/vigil-host status --socket run/host-run/host.sock
  fleet:    export VIGIL_SERVER=$VIGIL_SERVER VIGIL_CA=$VIGIL_CA VIGIL_CERT=$VIGIL_CERT VIGIL_KEY=$VIGIL_KEY
            ./bin/vigilctl agents ls
            ./bin/vigilctl fleet stop --wait --comment "trying the emergency stop"
            ./bin/vigilctl fleet resume --wait
            echo '{"plugins":{"example":{"config":{"interval":"2s"}}}}' | ./bin/vigilctl config set --scope fleet --comment faster
            ./bin/vigilctl config history --scope fleet
  vulns:    ./bin/vigilctl vuln top; ./bin/vigilctl vuln host $(hostname -s 2>/dev/null || echo dev)
  release:  ./bin/vigilctl release ls; ./bin/vigilctl rollout status example --watch   (docs/update.md)
  keys:     ./bin/vigilctl keyring show; ./bin/vigilctl keyring history   (release keyring, docs/releases.md)
  logs:     run/host.log  run/server.log  run/release/release.log
Ctrl-C stops it.
MSG
./bin/vigilctl agents ls || true
wait
