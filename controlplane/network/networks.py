"""Networks and subnets: create, read, change and delete them within the caller's scope."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from loom.network.v1 import network_pb2 as pb
from sqlalchemy import delete, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import FloatingIp, IpAllocation, Network, Port
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network import addresses, quotas
from controlplane.network.errors import Conflict, Forbidden, Invalid, not_found
from controlplane.network.scope import Caller, Page, networks_visible, subnets_visible
from controlplane.runtime.rpc import now

# Every network is a VXLAN segment on the hosts: 1500 less the VXLAN header.
DEFAULT_MTU = 1450
MIN_MTU = 68
# Ports the network owns itself (its DHCP server) do not keep it from being deleted.
_OWN_PORT_OWNERS = ("network:dhcp",)
# The port holding a floating IP's address on its external network.
FLOATING_OWNER = "network:floatingip"


async def get_network(s: AsyncSession, caller: Caller, network_id: str) -> Network:
    row = await s.scalar(select(Network).where(Network.id == network_id, networks_visible(caller)))
    if row is None:
        raise not_found("Network", network_id)
    return row


async def subnet_ids_of(s: AsyncSession, network_ids: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    if not network_ids:
        return out
    rows = await s.execute(
        select(SubnetRow.network_id, SubnetRow.id)
        .where(SubnetRow.network_id.in_(network_ids))
        .order_by(SubnetRow.created_at, SubnetRow.id)
    )
    for network_id, subnet_id in rows:
        out[network_id].append(subnet_id)
    return out


def _check_mtu(mtu: int) -> int:
    if not MIN_MTU <= mtu <= DEFAULT_MTU:
        raise Invalid(f"MTU {mtu} is out of range: {MIN_MTU} to {DEFAULT_MTU} on this cloud")
    return mtu


def _check_admin_fields(caller: Caller, shared: bool, external: bool) -> None:
    if external and not caller.is_admin:
        raise Forbidden("Policy doesn't allow setting router:external to be performed.")
    if shared and not caller.is_admin:
        raise Forbidden("Policy doesn't allow setting shared to be performed.")


async def create_network(
    s: AsyncSession, caller: Caller, req: pb.CreateNetworkRequest, ident: str
) -> Network:
    n = req.network
    project_id = caller.target_project(n.project_id)
    _check_admin_fields(caller, n.shared, n.router_external)
    await quotas.check(s, project_id, "network")
    row = Network(
        id=ident,
        project_id=project_id,
        name=n.name,
        description=n.description,
        admin_state_up=n.admin_state_up if req.admin_state_up_set else True,
        shared=n.shared,
        router_external=n.router_external,
        mtu=_check_mtu(n.mtu) if n.mtu else DEFAULT_MTU,
        status="ACTIVE",
        port_security_enabled=n.port_security_enabled if req.port_security_enabled_set else True,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    s.add(row)
    await s.flush()
    return row


async def update_network(s: AsyncSession, caller: Caller, req: pb.UpdateNetworkRequest) -> Network:
    row = await get_network(s, caller, req.id)
    caller.require_owner(row.project_id, "update_network")
    if req.HasField("shared") and req.shared != row.shared:
        _check_admin_fields(caller, True, False)
    if req.HasField("router_external") and req.router_external != row.router_external:
        _check_admin_fields(caller, False, True)
    if req.HasField("name"):
        row.name = req.name
    if req.HasField("description"):
        row.description = req.description
    if req.HasField("admin_state_up"):
        row.admin_state_up = req.admin_state_up
    if req.HasField("shared"):
        row.shared = req.shared
    if req.HasField("router_external"):
        row.router_external = req.router_external
    if req.HasField("mtu"):
        row.mtu = _check_mtu(req.mtu)
    if req.HasField("port_security_enabled"):
        row.port_security_enabled = req.port_security_enabled
    row.revision_number += 1
    row.updated_at = now()
    await s.flush()
    return row


async def delete_network(s: AsyncSession, caller: Caller, network_id: str) -> None:
    """Deletes the network with its subnets, its DHCP port and (an external network) its
    floating IPs that map to no port. A port in use, a router's gateway or a floating IP
    still associated makes it NetworkInUse (409)."""
    row = await get_network(s, caller, network_id)
    caller.require_owner(row.project_id, "delete_network")
    in_use = await s.scalar(
        select(
            or_(
                exists().where(
                    Port.network_id == network_id,
                    Port.device_owner.not_in((*_OWN_PORT_OWNERS, FLOATING_OWNER)),
                ),
                exists().where(
                    FloatingIp.floating_network_id == network_id, FloatingIp.port_id.is_not(None)
                ),
            )
        )
    )
    if in_use:
        raise Conflict(
            "NetworkInUse",
            f"Unable to complete operation on network {network_id}. There are one or more"
            " ports still in use on the network.",
        )
    await s.execute(delete(FloatingIp).where(FloatingIp.floating_network_id == network_id))
    await s.execute(delete(Port).where(Port.network_id == network_id))
    await s.execute(delete(SubnetRow).where(SubnetRow.network_id == network_id))
    await s.delete(row)


async def list_networks(s: AsyncSession, caller: Caller, page: Page) -> list[Network]:
    query = select(Network).where(networks_visible(caller))
    return list(await s.scalars(page.of(query, Network.id)))


# --------------------------------------------------------------------------- subnets


async def get_subnet(s: AsyncSession, caller: Caller, subnet_id: str) -> SubnetRow:
    row = await s.scalar(
        select(SubnetRow).where(SubnetRow.id == subnet_id, subnets_visible(caller))
    )
    if row is None:
        raise not_found("Subnet", subnet_id)
    return row


def _gateway(net: ipaddress.IPv4Network, given: str | None) -> ipaddress.IPv4Address | None:
    if given is None:
        return addresses.default_gateway(net)
    if given == "":
        return None
    return addresses.host_address(net, given)


async def create_subnet(
    s: AsyncSession, caller: Caller, req: pb.CreateSubnetRequest, ident: str
) -> SubnetRow:
    sub = req.subnet
    network = await get_network(s, caller, sub.network_id)
    # A shared network's subnets are its owner's (or an admin's) to make.
    caller.require_owner(network.project_id, "create_subnet")
    project_id = caller.target_project(sub.project_id) if sub.project_id else network.project_id
    if sub.ip_version not in (0, 4):
        raise Invalid("IPv6 subnets are not supported by this cloud")
    if not sub.cidr:
        raise Invalid("a cidr is required (subnet pools are not supported by this cloud)")
    net = addresses.parse_cidr(sub.cidr)
    gateway = _gateway(net, sub.gateway_ip if req.gateway_ip_set else None)
    if sub.allocation_pools:
        pools = addresses.check_pools(
            net, gateway, [(p.start, p.end) for p in sub.allocation_pools]
        )
    else:
        pools = addresses.default_pools(net, gateway)
    dns = addresses.check_dns(sub.dns_nameservers)
    routes = addresses.check_routes((r.destination, r.nexthop) for r in sub.host_routes)
    for other in await s.scalars(select(SubnetRow.cidr).where(SubnetRow.network_id == network.id)):
        if ipaddress.ip_network(other).overlaps(net):
            raise Invalid(
                f"Requested subnet with cidr: {net} for network: {network.id} overlaps with"
                " another subnet"
            )
    await quotas.check(s, project_id, "subnet")
    row = SubnetRow(
        id=ident,
        project_id=project_id,
        network_id=network.id,
        name=sub.name,
        description=sub.description,
        ip_version=4,
        cidr=str(net),
        gateway_ip=None if gateway is None else str(gateway),
        enable_dhcp=sub.enable_dhcp if req.enable_dhcp_set else True,
        allocation_pools=[p.as_dict() for p in pools],
        dns_nameservers=dns,
        host_routes=routes,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    s.add(row)
    network.revision_number += 1
    await s.flush()
    return row


async def update_subnet(s: AsyncSession, caller: Caller, req: pb.UpdateSubnetRequest) -> SubnetRow:
    row = await get_subnet(s, caller, req.id)
    caller.require_owner(row.project_id, "update_subnet")
    net = addresses.parse_cidr(row.cidr)
    if req.HasField("gateway_ip"):
        gateway = _gateway(net, req.gateway_ip)
        if gateway is not None:
            for p in addresses.pools_of(row.allocation_pools):
                if gateway in p:
                    raise Conflict(
                        "GatewayConflictWithAllocationPools",
                        f"Gateway ip {gateway} conflicts with allocation pool {p.start}-{p.end}.",
                    )
        row.gateway_ip = None if gateway is None else str(gateway)
    if req.HasField("allocation_pools"):
        gateway = None if row.gateway_ip is None else addresses.parse_ip(row.gateway_ip)
        pools = addresses.check_pools(
            net, gateway, [(p.start, p.end) for p in req.allocation_pools.pools]
        )
        row.allocation_pools = [p.as_dict() for p in pools]
    if req.HasField("name"):
        row.name = req.name
    if req.HasField("description"):
        row.description = req.description
    if req.HasField("enable_dhcp"):
        row.enable_dhcp = req.enable_dhcp
    if req.HasField("dns_nameservers"):
        row.dns_nameservers = addresses.check_dns(req.dns_nameservers.values)
    if req.HasField("host_routes"):
        row.host_routes = addresses.check_routes(
            (r.destination, r.nexthop) for r in req.host_routes.routes
        )
    row.revision_number += 1
    row.updated_at = now()
    await s.flush()
    return row


async def delete_subnet(s: AsyncSession, caller: Caller, subnet_id: str) -> None:
    row = await get_subnet(s, caller, subnet_id)
    caller.require_owner(row.project_id, "delete_subnet")
    # The network's own DHCP port gives its address on the subnet back.
    own = select(Port.id).where(
        Port.network_id == row.network_id, Port.device_owner.in_(_OWN_PORT_OWNERS)
    )
    held = await s.scalar(
        select(func.count())
        .select_from(IpAllocation)
        .where(IpAllocation.subnet_id == subnet_id, IpAllocation.port_id.not_in(own))
    )
    if held:
        raise Conflict(
            "SubnetInUse",
            f"Unable to complete operation on subnet {subnet_id}: One or more ports have an IP"
            " allocation from this subnet.",
        )
    await s.execute(
        delete(IpAllocation).where(
            IpAllocation.subnet_id == subnet_id, IpAllocation.port_id.in_(own)
        )
    )
    await s.delete(row)


async def list_subnets(
    s: AsyncSession, caller: Caller, network_id: str, page: Page
) -> list[SubnetRow]:
    query = select(SubnetRow).where(subnets_visible(caller))
    if network_id:
        query = query.where(SubnetRow.network_id == network_id)
    return list(await s.scalars(page.of(query, SubnetRow.id)))
