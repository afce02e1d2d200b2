"""A server's ports on a host: what the compute service gets in one call.

`bind_device_ports` gets or creates the server's ports (a new port's id follows from the
server's id and the NIC's index, so a retried call finds what the first made), takes
over the ports a user handed in, and binds every one to the host, in ONE transaction: on
failure none of this call's ports is left. `host_view` then reads what the host's agent
wires, in that same transaction when every network's DHCP port exists (a network's first
server makes it first, with `ensure_dhcp_ports`, and reads in a second transaction): a
PortBinding per port (the network's VNI, the addresses with their subnets' prefix,
gateway and DNS, the rules of the port's groups with remote groups resolved to their
members' addresses) and a NetworkDhcp per network (its DHCP port's address on each DHCP
subnet and its MAC, the same on every host, and the leases of the network's ports bound
to the host).

`auto_allocated_network` is "get me a network": one network per project, made once."""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from loom.compute.v1 import agent_bus_pb2 as agent
from loom.network.v1 import network_pb2 as pb
from sqlalchemy import String, and_, exists, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import (
    AutoAllocatedNetwork,
    DefaultSecurityGroup,
    IpAllocation,
    Network,
    Port,
    PortSecurityGroup,
    SecurityGroupRule,
)
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network import addresses, networks, ports, security_groups
from controlplane.network.errors import Conflict, Invalid, not_found
from controlplane.network.scope import Caller, networks_visible
from controlplane.runtime.rpc import id_for_request, now

COMPUTE_OWNER = "compute:nova"
DHCP_OWNER = "network:dhcp"
AUTO_NETWORK_NAME = "auto_allocated_network"
_MAX_VNI = 16_777_215
_VNI_ATTEMPTS = 32


def server_port_id(device_id: str, index: int) -> str:
    """The id of the port a server's NIC `index` gets: the same on every retry."""
    return id_for_request("network.server_port", f"{device_id}/{index}")


def dhcp_port_id(network_id: str) -> str:
    return id_for_request("network.dhcp_port", network_id)


@dataclass
class BoundPorts:
    """What bind_device_ports did: the server's ports in NIC order; `written`, whether
    this transaction wrote every one of them (made or bound it here, so its row stays
    locked to the end); the networks and subnets it read (by id); and the networks whose
    DHCP port is still to be made (ensure_dhcp_ports, in its own transaction)."""

    ports: list[Port]
    written: bool
    nets: dict[str, Network]
    subnets: dict[str, SubnetRow]
    dhcp_missing: list[str]


class DefaultGroupMissing(Exception):
    """The project has no default security group yet: make it (in its own transaction,
    security_groups.ensure_default) and bind again."""


async def _networks(
    s: AsyncSession, network_ids: Sequence[str], caller: Caller | None
) -> tuple[dict[str, Network], dict[str, SubnetRow], list[str], str | None]:
    """The networks (those `caller` sees, or all), their subnets, which of them have a
    DHCP subnet but no DHCP port yet, and (with a caller) its default security group."""
    wanted = list(dict.fromkeys(network_ids))
    if not wanted:
        return {}, {}, [], None
    dhcp_ids = [dhcp_port_id(n) for n in wanted]
    has_dhcp_port = (
        exists().where(Port.id.in_(dhcp_ids), Port.network_id == Network.id).label("has_dhcp")
    )
    query = select(Network, has_dhcp_port, literal(None, String).label("default_group"))
    if caller is not None:
        default_group = (
            select(DefaultSecurityGroup.security_group_id)
            .where(DefaultSecurityGroup.project_id == caller.project_id)
            .scalar_subquery()
        )
        query = select(Network, has_dhcp_port, default_group).where(networks_visible(caller))
    query = query.where(Network.id.in_(wanted))
    rows = (await s.execute(query)).all()
    nets = {n.id: n for n, _, _ in rows}
    served = {n.id for n, has, _ in rows if has}
    subnets = {sub.id: sub for sub in await ports.network_subnets(s, list(nets))}
    missing = [
        n
        for n in wanted
        if n in nets
        and n not in served
        and any(sub.network_id == n and sub.enable_dhcp for sub in subnets.values())
    ]
    return nets, subnets, missing, rows[0][2] if rows else None


async def bind_device_ports(
    s: AsyncSession, req: pb.BindDevicePortsRequest, default_group: str | None = None
) -> BoundPorts:
    """The server's ports, in NIC order, each bound to req.host. A port the user handed
    in must be the project's and free (or the server's already): PortInUse otherwise.
    A port made without req.security_groups_set joins the project's default group:
    `default_group`, or the one read here (DefaultGroupMissing when there is none)."""
    tenant = Caller(req.project_id, False)
    idents = {
        index: server_port_id(req.device_id, index)
        for index, wanted in enumerate(req.requested)
        if not wanted.port_id
    }
    found: dict[str, Port] = {}
    if idents:
        found = {p.id: p for p in await s.scalars(select(Port).where(Port.id.in_(idents.values())))}
    nets, subnets, missing, project_default = await _networks(
        s,
        [
            wanted.network_id
            for index, wanted in enumerate(req.requested)
            if index in idents and idents[index] not in found
        ],
        tenant,
    )
    if nets and not req.security_groups_set and default_group is None:
        if project_default is None:
            raise DefaultGroupMissing
        default_group = project_default
    out: list[Port] = []
    written = True
    for index, wanted in enumerate(req.requested):
        made = False
        if wanted.port_id:
            port = await ports.get_port(s, tenant, wanted.port_id)
            if port.device_id and port.device_id != req.device_id:
                raise Conflict(
                    "PortInUse",
                    f"Port {port.id} is still in use.",
                )
            port.device_id = req.device_id
            port.device_owner = COMPUTE_OWNER
        elif idents[index] in found:
            port = found[idents[index]]
        else:
            network = nets.get(wanted.network_id)
            if network is None:
                raise not_found("Network", wanted.network_id)
            create = pb.CreatePortRequest(
                scope=pb.Scope(project_id=req.project_id),
                port=pb.Port(
                    network_id=wanted.network_id,
                    device_id=req.device_id,
                    device_owner=COMPUTE_OWNER,
                    fixed_ips=[pb.FixedIp(ip_address=wanted.fixed_ip)] if wanted.fixed_ip else [],
                    security_group_ids=list(req.security_group_ids),
                ),
                fixed_ips_set=bool(wanted.fixed_ip),
                security_groups_set=req.security_groups_set,
            )
            own = [sub for sub in subnets.values() if sub.network_id == network.id]
            port = await ports.create_port(
                s,
                tenant,
                create,
                default_group,
                idents[index],
                loaded=(network, sorted(own, key=lambda x: (x.created_at, x.id))),
                bound_to=req.host,
            )
            made = True
        if port.binding_host_id != req.host:
            port.binding_host_id = req.host
            port.status = "ACTIVE"
            port.revision_number += 1
            port.updated_at = now()
        elif not made:
            written = False  # already bound here (a retry, say): maybe not written here
        out.append(port)
    await s.flush()
    # The networks of ports found or handed in, not read above.
    more = [p.network_id for p in out if p.network_id not in nets]
    if more:
        more_nets, more_subnets, more_missing, _ = await _networks(s, more, None)
        nets |= more_nets
        subnets |= more_subnets
        missing += more_missing
    return BoundPorts(out, written, nets, subnets, missing)


async def _segmentation_ids(
    s: AsyncSession, network_ids: Sequence[str], nets: dict[str, Network] | None = None
) -> dict[str, int]:
    """Each network's VNI, given on first need: the next free number (UNIQUE decides a
    race; the loser takes the next). `nets`: the networks as read in this transaction (a
    VNI once given never changes)."""
    rows: dict[str, int | None]
    if nets is not None:
        rows = {n: nets[n].segmentation_id for n in network_ids if n in nets}
    else:
        result = await s.execute(
            select(Network.id, Network.segmentation_id).where(Network.id.in_(network_ids))
        )
        rows = {str(i): v for i, v in result}
    out: dict[str, int] = {}
    for network_id in network_ids:
        vni = rows.get(network_id)
        for _ in range(_VNI_ATTEMPTS):
            if vni is not None:
                break
            top = await s.scalar(select(func.max(Network.segmentation_id)))
            candidate = int(top or 0) + 1
            if candidate > _MAX_VNI:
                raise Conflict("NoNetworkAvailable", "No VXLAN segment is left for the network.")
            try:
                async with s.begin_nested():
                    await s.execute(
                        update(Network)
                        .where(Network.id == network_id, Network.segmentation_id.is_(None))
                        .values(segmentation_id=candidate)
                    )
            except IntegrityError:
                continue
            vni = await s.scalar(select(Network.segmentation_id).where(Network.id == network_id))
        if vni is None:
            raise Conflict("NoNetworkAvailable", "No VXLAN segment could be given the network.")
        out[network_id] = int(vni)
    return out


async def ensure_dhcp_ports(
    sessions: async_sessionmaker[AsyncSession], network_ids: Sequence[str]
) -> None:
    """Each network with a DHCP subnet gets its DHCP server's port (device_owner
    network:dhcp, an address on each DHCP subnet), in its own transaction: two first
    binds racing make one (the loser's insert conflicts on the port's id)."""
    for network_id in dict.fromkeys(network_ids):
        ident = dhcp_port_id(network_id)
        async with sessions() as s:
            exists = await s.get(Port, ident)
            subnets = list(
                await s.scalars(
                    select(SubnetRow.id).where(
                        SubnetRow.network_id == network_id, SubnetRow.enable_dhcp.is_(True)
                    )
                )
            )
        if exists is not None or not subnets:
            continue
        try:
            async with sessions.begin() as s:
                network = await s.get(Network, network_id)
                if network is None:
                    continue
                port = Port(
                    id=ident,
                    project_id=network.project_id,
                    network_id=network.id,
                    name="",
                    description="",
                    admin_state_up=True,
                    mac_address=addresses.random_mac(),
                    device_id=f"dhcp-{network.id}",
                    device_owner=DHCP_OWNER,
                    binding_host_id="",
                    status="ACTIVE",
                    port_security_enabled=False,
                    revision_number=1,
                    created_at=now(),
                    updated_at=None,
                )
                s.add(port)
                await s.flush()
                for subnet_id in subnets:
                    sub = await s.get(SubnetRow, subnet_id)
                    if sub is not None:
                        await ports.allocate_address(s, sub, port.id, None, DHCP_OWNER)
        except IntegrityError:
            continue  # a concurrent bind made it (or took its MAC: the next bind retries)


@dataclass(frozen=True)
class HostView:
    bindings: list[agent.PortBinding]
    dhcp: list[agent.NetworkDhcp]
    network_names: list[str]
    # The ports' addresses and security groups, as the bindings were read from.
    ips: dict[str, list[IpAllocation]]
    groups: dict[str, list[str]]


def _lease_hostname(address: str) -> str:
    return "host-" + address.replace(".", "-")


async def host_view(
    s: AsyncSession,
    server_ports: Sequence[Port],
    host: str,
    revision: int,
    loaded: tuple[dict[str, Network], dict[str, SubnetRow]] | None = None,
) -> HostView:
    """What `host`'s agent needs for these ports (see the module's docstring); the bindings
    carry `revision` (port_security.next_revision). `loaded`: the ports' networks and
    their subnets as this transaction read them already (what the bindings take of them,
    VNI, MTU, prefixes, gateways and DNS servers, is no security change: the revision
    orders nothing of it); read here otherwise."""
    network_ids = list(dict.fromkeys(p.network_id for p in server_ports))
    if loaded is not None and all(n in loaded[0] for n in network_ids):
        nets, subnets = loaded
    else:
        nets, subnets, _, _ = await _networks(s, network_ids, None)
    vnis = await _segmentation_ids(s, network_ids, nets)
    ips, groups = await ports.details(s, [p.id for p in server_ports])
    bindings = await _bindings(s, server_ports, vnis, nets, subnets, revision, ips, groups)
    dhcp = await _dhcp_services(s, network_ids, nets, subnets, vnis, host)
    return HostView(bindings, dhcp, [nets[p.network_id].name for p in server_ports], ips, groups)


async def port_bindings(
    s: AsyncSession, bound: Sequence[Port], revision: int
) -> list[agent.PortBinding]:
    """The current bindings of ports already bound (their networks have VNIs), in order."""
    network_ids = list(dict.fromkeys(p.network_id for p in bound))
    nets = {n.id: n for n in await s.scalars(select(Network).where(Network.id.in_(network_ids)))}
    vnis = await _segmentation_ids(s, network_ids, nets)
    subnets = {
        sub.id: sub
        for sub in await s.scalars(select(SubnetRow).where(SubnetRow.network_id.in_(network_ids)))
    }
    ips, groups = await ports.details(s, [p.id for p in bound])
    return await _bindings(s, bound, vnis, nets, subnets, revision, ips, groups)


async def _bindings(
    s: AsyncSession,
    server_ports: Sequence[Port],
    vnis: dict[str, int],
    nets: dict[str, Network],
    subnets: dict[str, SubnetRow],
    revision: int,
    ips: dict[str, list[IpAllocation]],
    groups: dict[str, list[str]],
) -> list[agent.PortBinding]:
    group_ids = sorted({g for gs in groups.values() for g in gs})
    rules = await security_groups.rules_of(s, group_ids)
    remote_ids = sorted(
        {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id}
    )
    members: dict[str, list[str]] = defaultdict(list)
    if remote_ids:
        rows = await s.execute(
            select(PortSecurityGroup.security_group_id, IpAllocation.ip_address)
            .join(IpAllocation, IpAllocation.port_id == PortSecurityGroup.port_id)
            .where(PortSecurityGroup.security_group_id.in_(remote_ids))
            .order_by(IpAllocation.ip_address)
        )
        for group_id, address in rows:
            members[group_id].append(address)

    def fixed(a: IpAllocation) -> agent.FixedIp:
        sub = subnets[a.subnet_id]
        return agent.FixedIp(
            subnet_id=a.subnet_id,
            ip_address=a.ip_address,
            prefixlen=ipaddress.ip_network(sub.cidr).prefixlen,
            gateway_ip=sub.gateway_ip or "",
            dns_nameservers=[str(d) for d in sub.dns_nameservers or []],
        )

    def rule(r: SecurityGroupRule) -> agent.SecurityGroupRule:
        return agent.SecurityGroupRule(
            rule_id=r.id,
            direction=agent.RULE_DIRECTION_INGRESS
            if r.direction == "ingress"
            else agent.RULE_DIRECTION_EGRESS,
            ethertype=r.ethertype,
            protocol=r.protocol or "",
            port_range_min=r.port_range_min or 0,
            port_range_max=r.port_range_max or 0,
            remote_ip_prefix=r.remote_ip_prefix or "",
            remote_group_id=r.remote_group_id or "",
            remote_group_member_ips=members.get(r.remote_group_id or "", []),
        )

    return [
        agent.PortBinding(
            port_id=p.id,
            network_id=p.network_id,
            segmentation_id=vnis[p.network_id],
            mac_address=p.mac_address,
            fixed_ips=[fixed(a) for a in ips.get(p.id, [])],
            mtu=nets[p.network_id].mtu,
            security_group_rules=[rule(r) for g in sorted(groups.get(p.id, [])) for r in rules[g]]
            if p.port_security_enabled
            else [],
            port_security_enabled=p.port_security_enabled,
            # Hosts that read only the older list get the pairs with the port's own MAC.
            allowed_address_pairs=[
                a["ip_address"]
                for a in p.allowed_address_pairs or []
                if a["mac_address"] == p.mac_address
            ]
            if p.port_security_enabled
            else [],
            address_pairs=[
                agent.AllowedAddressPair(ip_address=a["ip_address"], mac_address=a["mac_address"])
                for a in p.allowed_address_pairs or []
            ]
            if p.port_security_enabled
            else [],
            security_revision=revision,
        )
        for p in server_ports
    ]


async def _dhcp_services(
    s: AsyncSession,
    network_ids: Sequence[str],
    nets: dict[str, Network],
    subnets: dict[str, SubnetRow],
    vnis: dict[str, int],
    host: str,
) -> list[agent.NetworkDhcp]:
    served: dict[str, list[SubnetRow]] = {
        network_id: [
            sub for sub in subnets.values() if sub.network_id == network_id and sub.enable_dhcp
        ]
        for network_id in network_ids
    }
    servers = {dhcp_port_id(n): n for n, subs in served.items() if subs}
    if not servers:
        return []
    # One read for every network: its DHCP port with its addresses, and the addresses of
    # its compute ports bound to the host (the leases), by port then address.
    rows = await s.execute(
        select(
            Port.id,
            Port.network_id,
            Port.mac_address,
            IpAllocation.ip_address,
            IpAllocation.subnet_id,
        )
        .outerjoin(IpAllocation, IpAllocation.port_id == Port.id)
        .where(
            or_(
                Port.id.in_(list(servers)),
                and_(
                    Port.network_id.in_(list(servers.values())),
                    Port.binding_host_id == host,
                    Port.device_owner.like("compute:%"),
                ),
            )
        )
        .order_by(Port.id, IpAllocation.id)
    )
    server_macs: dict[str, str] = {}
    server_ips: dict[str, dict[str, str]] = defaultdict(dict)
    leased: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for port_id, network_id, mac, address, subnet_id in rows:
        if port_id in servers:
            server_macs[network_id] = mac
            if address is not None:
                server_ips[network_id][subnet_id] = address
        elif address is not None:
            leased[network_id].append((mac, address, subnet_id))
    out: list[agent.NetworkDhcp] = []
    for network_id in network_ids:
        if not served[network_id] or network_id not in server_macs:
            continue
        served_ids = {sub.id for sub in served[network_id]}
        addresses_of_server = server_ips[network_id]
        out.append(
            agent.NetworkDhcp(
                network_id=network_id,
                vni=vnis[network_id],
                mtu=nets[network_id].mtu,
                dhcp_mac_address=server_macs[network_id],
                subnets=[
                    agent.DhcpSubnet(
                        subnet_id=sub.id,
                        cidr=sub.cidr,
                        gateway_ip=sub.gateway_ip or "",
                        dns_nameservers=[str(d) for d in sub.dns_nameservers or []],
                        dhcp_server_ip=addresses_of_server[sub.id],
                    )
                    for sub in sorted(served[network_id], key=lambda x: (x.created_at, x.id))
                    if sub.id in addresses_of_server
                ],
                leases=[
                    agent.DhcpLease(
                        mac_address=mac, ip_address=address, hostname=_lease_hostname(address)
                    )
                    for mac, address, subnet_id in leased[network_id]
                    if subnet_id in served_ids
                ],
            )
        )
    return out


async def auto_allocated_network(
    sessions: async_sessionmaker[AsyncSession],
    project_id: str,
    pool: ipaddress.IPv4Network,
    prefixlen: int,
) -> str:
    """The id of the project's auto-allocated network, made (with one IPv4 subnet of
    `prefixlen` from `pool`, clear of the project's other subnets) on first use. Two first
    uses racing make one: the second waits on the first's row and reads it."""
    async with sessions() as s:
        found = await s.scalar(
            select(AutoAllocatedNetwork.network_id).where(
                AutoAllocatedNetwork.project_id == project_id
            )
        )
    if found is not None:
        return found
    # The network's id follows from the project: a racing first use collides on it
    # (waiting for the winner's commit) and reads the winner's below.
    ident = id_for_request("network.auto_allocated", project_id)
    caller = Caller(project_id, False)
    try:
        async with sessions.begin() as s:
            await networks.create_network(
                s,
                caller,
                pb.CreateNetworkRequest(network=pb.Network(name=AUTO_NETWORK_NAME)),
                ident,
            )
            await s.flush()
            taken = [
                ipaddress.ip_network(c)
                for c in await s.scalars(
                    select(SubnetRow.cidr).where(SubnetRow.project_id == project_id)
                )
            ]
            cidr = next(
                (
                    c
                    for c in pool.subnets(new_prefix=prefixlen)
                    if not any(c.overlaps(t) for t in taken)
                ),
                None,
            )
            if cidr is None:
                raise Invalid(f"No free /{prefixlen} is left in {pool} for the project.")
            await networks.create_subnet(
                s,
                caller,
                pb.CreateSubnetRequest(
                    subnet=pb.Subnet(network_id=ident, name="auto_allocated_subnet", cidr=str(cidr))
                ),
                id_for_request("network.auto_allocated_subnet", project_id),
            )
            s.add(AutoAllocatedNetwork(project_id=project_id, network_id=ident))
            await s.flush()
    except IntegrityError:
        pass
    async with sessions() as s:
        network_id = await s.scalar(
            select(AutoAllocatedNetwork.network_id).where(
                AutoAllocatedNetwork.project_id == project_id
            )
        )
    if network_id is None:
        raise not_found("Network", ident)
    return network_id
