"""The node agent's network data plane: bridges, VXLAN, taps, DHCP and security groups.

Public surface: `HostDataPlane` (plug, unplug, reconcile), its `DataPlaneConfig`, and the
typed inputs in `model`, made from `loom.compute.v1` messages by `model.port_from_proto`
and `model.dhcp_from_proto`. docs/networking.md describes what lands on a host.
"""

from nodeagent.network.dataplane import DataPlaneConfig, HostDataPlane
from nodeagent.network.model import (
    DhcpLease,
    DhcpSubnet,
    FixedIp,
    NetworkDhcp,
    Port,
    Rule,
    dhcp_from_proto,
    port_from_proto,
)
from nodeagent.network.names import bridge_name, dhcp_namespace, tap_name, vxlan_name
from nodeagent.network.runner import CommandError, Runner

__all__ = [
    "CommandError",
    "DataPlaneConfig",
    "DhcpLease",
    "DhcpSubnet",
    "FixedIp",
    "HostDataPlane",
    "NetworkDhcp",
    "Port",
    "Rule",
    "Runner",
    "bridge_name",
    "dhcp_from_proto",
    "dhcp_namespace",
    "port_from_proto",
    "tap_name",
    "vxlan_name",
]
