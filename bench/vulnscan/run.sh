#!/bin/sh
# bench/vulnscan/run.sh prints vulnscan's figures: inventory collection on
# this machine (time and peak RSS), and the fleet index over a synthetic
# fleet, by default the issue's 1,000,000 hosts over 5,000 inventories of
# 1,000 packages (override with VIGIL_VULN_HOSTS, VIGIL_VULN_INVENTORIES,
# VIGIL_VULN_PACKAGES, VIGIL_VULN_ADVISORIES).
set -eu
cd "$(dirname "$0")/../.."

echo "== inventory collection on this machine (targets: <= 100 ms, <= 20 MB RSS)"
go run ./bench/vulnscan/collect -n 50
go test -run='^$' -bench=CollectHost -benchmem ./plugins/vulnscan/collect | grep Benchmark

echo "== fleet index (targets: CVE -> hosts p99 <= 50 ms, index <= 2 GB, ingest <= 50 ms, re-match <= 10 s)"
VIGIL_VULN_HOSTS="${VIGIL_VULN_HOSTS:-1000000}" \
VIGIL_VULN_INVENTORIES="${VIGIL_VULN_INVENTORIES:-5000}" \
	go test -run='^$' -bench=Fleet -timeout 60m ./vuln/index | grep -v '^\(goos\|goarch\|pkg\|cpu\):'
