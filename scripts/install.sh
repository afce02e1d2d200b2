#!/usr/bin/env bash
# Installs what Loom needs, idempotently: Debian packages (when root), then the virtualenv
# with exactly the versions in uv.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
APT_PACKAGES=(libvirt-dev pkg-config gcc python3-venv python3-dev
  libvirt-daemon-system qemu-system-x86 qemu-utils dnsmasq-base
  busybox-static cpio postgresql novnc chromium chromium-driver)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "missing Debian packages (run as root or install them): ${missing[*]}" >&2
  fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

# uv, at the version pyproject.toml requires, in a small virtualenv of its own (.uv/), so
# syncing the project's environment never removes the tool doing the sync.
UV_VERSION=$(sed -nE 's/^required-version = "==([^"]+)"/\1/p' pyproject.toml)
UV=${UV:-.uv/bin/uv}
if ! "$UV" --version 2>/dev/null | grep -qx "uv $UV_VERSION"; then
  rm -rf .uv
  "$PYTHON" -m venv .uv
  .uv/bin/python -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  UV=.uv/bin/uv
fi

# Exactly what uv.lock says: --frozen never re-resolves, so another day gives the same
# versions. LOOM_SYNC_ARGS narrows it (an agent host: --no-default-groups).
# shellcheck disable=SC2086
UV_PROJECT_ENVIRONMENT=$VENV "$UV" sync --frozen --quiet --python "$PYTHON" ${LOOM_SYNC_ARGS:-}
