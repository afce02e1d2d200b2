#!/usr/bin/env bash
# Installs OpenStack's dashboard (Horizon) from PyPI into a virtualenv of its own
# (HORIZON_VENV, default /var/tmp/loom-horizon-venv; version HORIZON_VERSION, default
# 27.0.0), never into Loom's locked environment. Idempotent: a venv holding that version
# is left as it is. scripts/services.sh runs it so the tests find it ready.
set -euo pipefail
VENV=${HORIZON_VENV:-/var/tmp/loom-horizon-venv}
VERSION=${HORIZON_VERSION:-27.0.0}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

if "$VENV/bin/python" -c "import openstack_dashboard" 2>/dev/null &&
  [[ $(cat "$VENV/.horizon-version" 2>/dev/null) == "$VERSION" ]]; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "horizon==$VERSION"
echo "$VERSION" >"$VENV/.horizon-version"
