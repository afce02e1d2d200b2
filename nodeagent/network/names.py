"""Device and namespace names. Linux interface names hold at most 15 characters."""

from __future__ import annotations

# Every device Loom makes carries an alias `loom:<kind>:<uuid>`: it is how reconcile tells
# Loom's devices from anything else on the host, and which port or network one belongs to.
ALIAS_PREFIX = "loom:"


def bridge_name(network_id: str) -> str:
    return f"brq{network_id[:11]}"


def vxlan_name(vni: int) -> str:
    return f"vxlan-{vni}"


def tap_name(port_id: str) -> str:
    return f"tap{port_id[:11]}"


def dhcp_namespace(network_id: str, host_netns: str = "") -> str:
    """`qdhcp-<network id>`; a host that is itself a namespace (tests: one per simulated
    host) prefixes its own name, so two such hosts can serve the same network."""
    return f"{host_netns}-qdhcp-{network_id}" if host_netns else f"qdhcp-{network_id}"


def dhcp_bridge_end(network_id: str) -> str:
    """The DHCP veth's end on the bridge (host side)."""
    return f"dhb{network_id[:11]}"


def dhcp_ns_end(network_id: str) -> str:
    """The DHCP veth's end inside the qdhcp namespace."""
    return f"dhn{network_id[:11]}"


def alias(kind: str, ident: str) -> str:
    return f"{ALIAS_PREFIX}{kind}:{ident}"


def parse_alias(text: str) -> tuple[str, str] | None:
    """(kind, id) of a Loom alias, None for anything else."""
    if not text.startswith(ALIAS_PREFIX):
        return None
    kind, _, ident = text[len(ALIAS_PREFIX) :].partition(":")
    return (kind, ident) if kind and ident else None


def router_namespace(router_id: str, host_netns: str = "") -> str:
    """`qrouter-<router id>`, prefixed like `dhcp_namespace` on a host that is itself a
    namespace."""
    return f"{host_netns}-qrouter-{router_id}" if host_netns else f"qrouter-{router_id}"


def router_interface_name(port_id: str) -> str:
    """An interface leg's veth end inside the router's namespace."""
    return f"qr-{port_id[:11]}"


def router_gateway_name(port_id: str) -> str:
    """The gateway leg's veth end inside the router's namespace."""
    return f"qg-{port_id[:11]}"


def router_bridge_end(port_id: str) -> str:
    """An interface leg's veth end on the network's bridge (host side)."""
    return f"qrb{port_id[:11]}"


def router_gateway_bridge_end(port_id: str) -> str:
    """The gateway leg's veth end on the external network's bridge (host side)."""
    return f"qgb{port_id[:11]}"
