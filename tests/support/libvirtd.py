"""libvirtd for the real-guest tests: whether the system daemon answers, and what a test
does when it does not (skip on a workstation; fail in CI, where `make services` starts it)."""

from __future__ import annotations

import os

import libvirt
import pytest

SYSTEM_URI = "qemu:///system"


def libvirtd_unreachable(uri: str = SYSTEM_URI) -> str:
    """Why libvirtd cannot be used at uri, or "" when it answers."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return f"libvirtd is not reachable at {uri} ({exc.get_error_message()}); run make services"
    conn.close()
    return ""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_libvirtd(uri: str = SYSTEM_URI) -> None:
    """Returns when libvirtd answers at uri. Otherwise skips the test, or fails it in CI:
    a CI run whose real guests silently skipped would pass without testing them."""
    reason = libvirtd_unreachable(uri)
    if not reason:
        return
    if in_ci():
        pytest.fail(f"{reason} (CI starts libvirtd; real-guest tests may not skip there)")
    pytest.skip(reason)
