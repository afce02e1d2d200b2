#!/usr/bin/env bash
# Starts the services the tests need when they are not running: PostgreSQL (trust on
# loopback), and virtlogd/libvirtd for real guests. Idempotent; the tests start their own
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

if command -v libvirtd >/dev/null; then
  # Debian's udev rule gives /dev/kvm to group kvm (mode 0660), where libvirt's qemu user
  # is; a machine without udev may leave it root-only. Then libvirt's QEMU capability
  # probe (run as root) sees KVM while its validity check (as the qemu user) does not,
  # so every domain definition probes QEMU afresh: 30-40 s per define.
  if [[ -c /dev/kvm ]] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm 2>/dev/null && chmod 0660 /dev/kvm 2>/dev/null || true
  fi
  mkdir -p /var/log/libvirt /var/run/libvirt
  pgrep -x virtlogd >/dev/null || virtlogd -d 2>/dev/null || true
  pgrep -x libvirtd >/dev/null || libvirtd -d 2>/dev/null || true
  for _ in $(seq 50); do [[ -S /var/run/libvirt/libvirt-sock ]] && break; sleep 0.2; done
  [[ -S /var/run/libvirt/libvirt-sock ]] && echo "libvirtd: up" || echo "libvirtd: not running" >&2
fi
exit 0
