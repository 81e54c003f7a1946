#!/bin/sh
# bench/artifacts/run.sh prints artifact serving figures: a real vigil-server
# (embedded etcd, mutual TLS) serving a published 20 MB release to 8 and then
# 32 concurrent downloaders holding the host certificate; server CPU comes
# from /proc/PID/stat. Override the size and count with VIGIL_ART_SIZE and
# VIGIL_ART_N.
set -eu
cd "$(dirname "$0")/../.."
bin=$(mktemp -d)/vigil-server
go build -o "$bin" ./cmd/vigil-server
for c in 8 32; do
	go run ./bench/artifacts -server "$bin" -size "${VIGIL_ART_SIZE:-20971520}" -n "${VIGIL_ART_N:-100}" -c "$c"
done
rm -rf "$(dirname "$bin")"
