#!/usr/bin/env bash
# sdk/ is the public plugin API and plugins/ build only against it: neither
# may import the host or the server. Fails listing every offending import.
set -euo pipefail
cd "$(dirname "$0")/.."
mod=$(go list -m)
bad=$(go list -f '{{.ImportPath}}{{range .Imports}} {{.}}{{end}}' ./sdk/... ./plugins/... |
  awk -v m="$mod" '{for (i = 2; i <= NF; i++) if ($i ~ "^" m "/(host|server)(/|$)") print $1 " imports " $i}')
if [ -n "$bad" ]; then
  echo "sdk/ and plugins/ must not import host/ or server/:" >&2
  echo "$bad" >&2
  exit 1
fi
echo "imports ok: sdk/ and plugins/ do not import host/ or server/"
