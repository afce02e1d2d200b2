"""libvirtd for the real-guest tests: whether the system daemon answers."""

from __future__ import annotations

import libvirt

SYSTEM_URI = "qemu:///system"


def libvirtd_unreachable(uri: str = SYSTEM_URI) -> str:
    """Why libvirtd cannot be used at uri, or "" when it answers."""
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return f"libvirtd is not reachable at {uri} ({exc.get_error_message()}); run make services"
    conn.close()
    return ""
