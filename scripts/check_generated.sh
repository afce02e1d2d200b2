#!/usr/bin/env bash
# Regenerates protos into a temporary folder and fails when generated/ differs.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen_protos.sh "$tmp" >/dev/null 2>&1
# Bytecode caches (written whenever the stubs are imported) are not generated code.
if ! diff -r -q -x __pycache__ generated/loom "$tmp/loom"; then
  echo "generated/ is stale: run 'make protos' and commit the result" >&2
  exit 1
fi
echo "generated/ is current"
