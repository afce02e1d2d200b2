#!/usr/bin/env bash
# Starts the services the tests need when they are not running: PostgreSQL (trust on
# loopback), and (through `loom prepare-host`) virtlogd/libvirtd for real guests. Idempotent; the tests start their own
# nats-server on a free port.
set -uo pipefail

pg_ready() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_ready; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)
  if [[ -n $ver ]]; then
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if [[ -w $hba ]] && ! grep -qE '^host\s+all\s+all\s+127\.0\.0\.1/32\s+trust' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start 2>/dev/null || true
    for _ in $(seq 50); do pg_ready && break; sleep 0.2; done
  fi
fi
pg_ready && echo "postgresql: up" || echo "postgresql: NOT reachable on 127.0.0.1:5432" >&2

# Real guests: /dev/kvm for libvirt's QEMU user, then virtlogd and libvirtd. The same code
# as `loom prepare-host` (the README's manual step) and `loom up --hypervisor qemu`.
if command -v libvirtd >/dev/null; then
  "${VENV:-.venv}/bin/loom" prepare-host || echo "libvirtd: not ready for real guests" >&2
fi
# OpenStack's dashboard for tests/e2e/test_horizon.py, in a virtualenv of its own.
scripts/horizon/install.sh || echo "horizon: not installed" >&2
exit 0
