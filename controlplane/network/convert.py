"""Rows to loom.network.v1 messages: the one place the domain meets protobuf."""

from __future__ import annotations

from collections.abc import Sequence

from loom.network.v1 import network_pb2 as pb

from controlplane.db.models import (
    FloatingIp,
    IpAllocation,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
)
from controlplane.db.models import Subnet as SubnetRow
from controlplane.runtime.rpc import timestamp


def network_pb(n: Network, subnet_ids: Sequence[str]) -> pb.Network:
    return pb.Network(
        id=n.id,
        project_id=n.project_id,
        name=n.name,
        description=n.description,
        admin_state_up=n.admin_state_up,
        shared=n.shared,
        router_external=n.router_external,
        mtu=n.mtu,
        status=n.status,
        subnet_ids=list(subnet_ids),
        revision_number=n.revision_number,
        created_at=timestamp(n.created_at),
        updated_at=timestamp(n.updated_at or n.created_at),
        port_security_enabled=n.port_security_enabled,
    )


def subnet_pb(s: SubnetRow, external: bool) -> pb.Subnet:
    """The subnet; `external`: its network is external."""
    return pb.Subnet(
        id=s.id,
        project_id=s.project_id,
        network_id=s.network_id,
        name=s.name,
        description=s.description,
        ip_version=s.ip_version,
        cidr=s.cidr,
        gateway_ip=s.gateway_ip or "",
        enable_dhcp=s.enable_dhcp,
        allocation_pools=[
            pb.AllocationPool(start=p["start"], end=p["end"]) for p in s.allocation_pools
        ],
        dns_nameservers=list(s.dns_nameservers),
        host_routes=[
            pb.HostRoute(destination=r["destination"], nexthop=r["nexthop"]) for r in s.host_routes
        ],
        revision_number=s.revision_number,
        created_at=timestamp(s.created_at),
        updated_at=timestamp(s.updated_at or s.created_at),
        router_external=external,
    )


def port_pb(p: Port, ips: Sequence[IpAllocation], groups: Sequence[str]) -> pb.Port:
    return pb.Port(
        id=p.id,
        project_id=p.project_id,
        network_id=p.network_id,
        name=p.name,
        description=p.description,
        admin_state_up=p.admin_state_up,
        mac_address=p.mac_address,
        fixed_ips=[pb.FixedIp(subnet_id=a.subnet_id, ip_address=a.ip_address) for a in ips],
        device_id=p.device_id,
        device_owner=p.device_owner,
        security_group_ids=sorted(groups),
        binding_host_id=p.binding_host_id,
        status=p.status,
        revision_number=p.revision_number,
        created_at=timestamp(p.created_at),
        updated_at=timestamp(p.updated_at or p.created_at),
        port_security_enabled=p.port_security_enabled,
        allowed_address_pairs=[
            pb.AddressPair(ip_address=a["ip_address"], mac_address=a["mac_address"])
            for a in p.allowed_address_pairs or []
        ],
    )


def rule_pb(r: SecurityGroupRule) -> pb.SecurityGroupRule:
    out = pb.SecurityGroupRule(
        id=r.id,
        project_id=r.project_id,
        security_group_id=r.security_group_id,
        direction=r.direction,
        ethertype=r.ethertype,
        protocol=r.protocol or "",
        remote_ip_prefix=r.remote_ip_prefix or "",
        remote_group_id=r.remote_group_id or "",
        description=r.description,
        revision_number=r.revision_number,
        created_at=timestamp(r.created_at),
        updated_at=timestamp(r.updated_at or r.created_at),
    )
    if r.port_range_min is not None:
        out.port_range_min = r.port_range_min
    if r.port_range_max is not None:
        out.port_range_max = r.port_range_max
    return out


def group_pb(g: SecurityGroup, rules: Sequence[SecurityGroupRule]) -> pb.SecurityGroup:
    return pb.SecurityGroup(
        id=g.id,
        project_id=g.project_id,
        name=g.name,
        description=g.description,
        rules=[rule_pb(r) for r in rules],
        revision_number=g.revision_number,
        created_at=timestamp(g.created_at),
        updated_at=timestamp(g.updated_at or g.created_at),
        stateful=g.stateful,
    )


def router_pb(r: Router, gateway_ips: Sequence[IpAllocation]) -> pb.Router:
    out = pb.Router(
        id=r.id,
        project_id=r.project_id,
        name=r.name,
        description=r.description,
        admin_state_up=r.admin_state_up,
        status=r.status,
        revision_number=r.revision_number,
        created_at=timestamp(r.created_at),
        updated_at=timestamp(r.updated_at or r.created_at),
    )
    if r.gateway_network_id:
        out.external_gateway.CopyFrom(
            pb.ExternalGateway(
                network_id=r.gateway_network_id,
                enable_snat=r.enable_snat,
                external_fixed_ips=[
                    pb.FixedIp(subnet_id=a.subnet_id, ip_address=a.ip_address) for a in gateway_ips
                ],
            )
        )
    return out


def floating_ip_pb(f: FloatingIp) -> pb.FloatingIp:
    return pb.FloatingIp(
        id=f.id,
        project_id=f.project_id,
        floating_network_id=f.floating_network_id,
        floating_ip_address=f.floating_ip_address,
        port_id=f.port_id or "",
        fixed_ip_address=f.fixed_ip_address or "",
        router_id=f.router_id or "",
        status=f.status,
        description=f.description,
        revision_number=f.revision_number,
        created_at=timestamp(f.created_at),
        updated_at=timestamp(f.updated_at or f.created_at),
    )
