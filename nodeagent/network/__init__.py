"""The node agent's network data plane: bridges, VXLAN, taps, DHCP, security groups and
routers.

Public surface: `HostDataPlane` (plug, unplug, ensure_router, remove_router, reconcile),
its `DataPlaneConfig`, and the typed inputs in `model`, made from `loom.compute.v1`
messages by `model.port_from_proto`, `model.dhcp_from_proto` and
`model.router_from_proto`. docs/networking.md describes what lands on a host.
"""

from nodeagent.network.dataplane import DataPlaneConfig, HostDataPlane
from nodeagent.network.model import (
    DhcpLease,
    DhcpSubnet,
    FixedIp,
    FloatingIpMapping,
    NetworkDhcp,
    Port,
    Router,
    RouterLeg,
    Rule,
    dhcp_from_proto,
    port_from_proto,
    router_from_proto,
)
from nodeagent.network.names import (
    bridge_name,
    dhcp_namespace,
    router_namespace,
    tap_name,
    vxlan_name,
)
from nodeagent.network.runner import CommandError, Runner

__all__ = [
    "CommandError",
    "DataPlaneConfig",
    "DhcpLease",
    "DhcpSubnet",
    "FixedIp",
    "FloatingIpMapping",
    "HostDataPlane",
    "NetworkDhcp",
    "Port",
    "Router",
    "RouterLeg",
    "Rule",
    "Runner",
    "bridge_name",
    "dhcp_from_proto",
    "dhcp_namespace",
    "port_from_proto",
    "router_from_proto",
    "router_namespace",
    "tap_name",
    "vxlan_name",
]
