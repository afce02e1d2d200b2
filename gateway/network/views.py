"""loom.network.v1 messages in Network v2's response shapes."""

from __future__ import annotations

from typing import Any

from loom.network.v1 import network_pb2 as pb

from gateway.network.common import iso, project_fields


def _standard(revision: int, created: Any, updated: Any) -> dict[str, Any]:
    return {
        "revision_number": revision,
        "created_at": iso(created),
        "updated_at": iso(updated),
        "tags": [],
    }


def network(n: pb.Network) -> dict[str, Any]:
    return {
        "id": n.id,
        "name": n.name,
        "description": n.description,
        **project_fields(n.project_id),
        "admin_state_up": n.admin_state_up,
        "status": n.status,
        "subnets": list(n.subnet_ids),
        "shared": n.shared,
        "router:external": n.router_external,
        "mtu": n.mtu,
        "port_security_enabled": n.port_security_enabled,
        "availability_zone_hints": [],
        "availability_zones": [],
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "l2_adjacency": True,
        **_standard(n.revision_number, n.created_at, n.updated_at),
    }


NETWORK_ATTRS = tuple(network(pb.Network()))


def subnet(s: pb.Subnet) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "description": s.description,
        **project_fields(s.project_id),
        "network_id": s.network_id,
        "ip_version": s.ip_version,
        "cidr": s.cidr,
        "gateway_ip": s.gateway_ip or None,
        "enable_dhcp": s.enable_dhcp,
        "allocation_pools": [{"start": p.start, "end": p.end} for p in s.allocation_pools],
        "dns_nameservers": list(s.dns_nameservers),
        "host_routes": [
            {"destination": r.destination, "nexthop": r.nexthop} for r in s.host_routes
        ],
        "ipv6_ra_mode": None,
        "ipv6_address_mode": None,
        "subnetpool_id": None,
        "segment_id": None,
        "service_types": [],
        "router:external": s.router_external,
        **_standard(s.revision_number, s.created_at, s.updated_at),
    }


SUBNET_ATTRS = tuple(subnet(pb.Subnet()))


def port(p: pb.Port, *, admin: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": p.id,
        "name": p.name,
        "description": p.description,
        **project_fields(p.project_id),
        "network_id": p.network_id,
        "admin_state_up": p.admin_state_up,
        "mac_address": p.mac_address,
        "fixed_ips": [{"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in p.fixed_ips],
        "device_id": p.device_id,
        "device_owner": p.device_owner,
        "security_groups": list(p.security_group_ids),
        "status": p.status,
        "port_security_enabled": p.port_security_enabled,
        "allowed_address_pairs": [
            {"ip_address": a.ip_address, "mac_address": a.mac_address}
            for a in p.allowed_address_pairs
        ],
        "extra_dhcp_opts": [],
        "binding:vnic_type": "normal",
        **_standard(p.revision_number, p.created_at, p.updated_at),
    }
    if admin:
        out["binding:host_id"] = p.binding_host_id
        out["binding:vif_type"] = "bridge" if p.binding_host_id else "unbound"
        out["binding:vif_details"] = {}
        out["binding:profile"] = {}
    return out


PORT_ATTRS = tuple(port(pb.Port(), admin=True))


def rule(r: pb.SecurityGroupRule) -> dict[str, Any]:
    return {
        "id": r.id,
        **project_fields(r.project_id),
        "security_group_id": r.security_group_id,
        "direction": r.direction,
        "ethertype": r.ethertype,
        "protocol": r.protocol or None,
        "port_range_min": r.port_range_min if r.HasField("port_range_min") else None,
        "port_range_max": r.port_range_max if r.HasField("port_range_max") else None,
        "remote_ip_prefix": r.remote_ip_prefix or None,
        "remote_group_id": r.remote_group_id or None,
        "remote_address_group_id": None,
        "normalized_cidr": r.remote_ip_prefix or None,
        "description": r.description,
        **_standard(r.revision_number, r.created_at, r.updated_at),
    }


RULE_ATTRS = tuple(rule(pb.SecurityGroupRule()))


def security_group(g: pb.SecurityGroup) -> dict[str, Any]:
    return {
        "id": g.id,
        "name": g.name,
        "description": g.description,
        **project_fields(g.project_id),
        "security_group_rules": [rule(r) for r in g.rules],
        "stateful": g.stateful,
        "shared": False,
        **_standard(g.revision_number, g.created_at, g.updated_at),
    }


SECURITY_GROUP_ATTRS = tuple(security_group(pb.SecurityGroup()))


def router(r: pb.Router) -> dict[str, Any]:
    gateway: dict[str, Any] | None = None
    if r.HasField("external_gateway"):
        g = r.external_gateway
        gateway = {
            "network_id": g.network_id,
            "enable_snat": g.enable_snat,
            "external_fixed_ips": [
                {"subnet_id": f.subnet_id, "ip_address": f.ip_address} for f in g.external_fixed_ips
            ],
        }
    return {
        "id": r.id,
        "name": r.name,
        "description": r.description,
        **project_fields(r.project_id),
        "admin_state_up": r.admin_state_up,
        "status": r.status,
        "external_gateway_info": gateway,
        "routes": [],
        "availability_zone_hints": [],
        "availability_zones": [],
        "flavor_id": None,
        **_standard(r.revision_number, r.created_at, r.updated_at),
    }


ROUTER_ATTRS = tuple(router(pb.Router()))


def router_interface(i: pb.RouterInterface) -> dict[str, Any]:
    return {
        "id": i.router_id,
        **project_fields(i.project_id),
        "port_id": i.port_id,
        "network_id": i.network_id,
        "subnet_id": i.subnet_ids[0] if i.subnet_ids else None,
        "subnet_ids": list(i.subnet_ids),
    }


def floating_ip(f: pb.FloatingIp) -> dict[str, Any]:
    return {
        "id": f.id,
        **project_fields(f.project_id),
        "floating_network_id": f.floating_network_id,
        "floating_ip_address": f.floating_ip_address,
        "fixed_ip_address": f.fixed_ip_address or None,
        "port_id": f.port_id or None,
        "router_id": f.router_id or None,
        "status": f.status,
        "description": f.description,
        **_standard(f.revision_number, f.created_at, f.updated_at),
    }


FLOATING_IP_ATTRS = tuple(floating_ip(pb.FloatingIp()))
