#!/usr/bin/env bash
# Regenerates generated/ from protos/: Python messages, gRPC stubs and .pyi type stubs.
# Usage: scripts/gen_protos.sh [OUTDIR]   (default: generated)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-generated}
rm -rf "$OUT/loom"
mkdir -p "$OUT"
mapfile -t files < <(find protos -name '*.proto' | LC_ALL=C sort)
"$PY" -m grpc_tools.protoc -I protos \
  --python_out="$OUT" --grpc_python_out="$OUT" \
  --mypy_out="$OUT" --mypy_grpc_out="$OUT" \
  --plugin=protoc-gen-mypy="$(dirname "$PY")/protoc-gen-mypy" \
  --plugin=protoc-gen-mypy_grpc="$(dirname "$PY")/protoc-gen-mypy_grpc" \
  "${files[@]}"
# Regular packages (not namespace packages) so mypy and setuptools find them plainly.
find "$OUT/loom" -type d -exec touch {}/__init__.py \;
touch "$OUT/loom/py.typed"
