"""Ports and IPAM: a port's MAC and fixed IPs, allocated atomically.

Atomicity rests on the database: ip_allocations is UNIQUE (subnet_id, ip_address) and
ports.mac_address is UNIQUE. An allocation inserts a free-looking candidate with ON
CONFLICT DO NOTHING; when a concurrent port took it first, nothing is inserted and the next
candidate is tried (the conflict waits for the other transaction, so it never aborts this
one). A port create is one transaction: when an address cannot be had, nothing of the port
is left."""

from __future__ import annotations

import ipaddress
import random
from collections import defaultdict
from collections.abc import Sequence

from loom.network.v1 import network_pb2 as pb
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.dialect import locks_rows, upsert_insert
from controlplane.db.models import (
    FloatingIp,
    IpAllocation,
    Network,
    Port,
    PortSecurityGroup,
    SecurityGroup,
)
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network import addresses, quotas, router_changes, security_changes
from controlplane.network.errors import Conflict, Forbidden, Invalid, not_found
from controlplane.network.networks import FLOATING_OWNER, get_network
from controlplane.network.scope import Caller, Page, owned
from controlplane.runtime.rpc import new_uuid, now

# Ports the network domain makes for its own resources (router interfaces and gateways,
# floating IPs); the port API may not delete them.
INTERFACE_OWNER = "network:router_interface"
GATEWAY_OWNER = "network:router_gateway"
SERVICE_OWNERS = (INTERFACE_OWNER, GATEWAY_OWNER, FLOATING_OWNER)
# A router's interface holds its subnet's gateway address; no other port may.
ROUTER_OWNERS = (INTERFACE_OWNER, GATEWAY_OWNER)
_MAC_ATTEMPTS = 16
# Every failed candidate is an address another port took meanwhile, so the loop ends
# when the pools run dry; this bound only guards against a bug.
_IP_ATTEMPTS = 10_000


async def get_port(s: AsyncSession, caller: Caller, port_id: str, lock: bool = False) -> Port:
    """The caller's port; with `lock`, its row locked to the end of the transaction."""
    query = select(Port).where(Port.id == port_id, owned(caller, Port.project_id))
    if lock and locks_rows(s):
        query = query.with_for_update()
    row = await s.scalar(query)
    if row is None:
        raise not_found("Port", port_id)
    return row


async def details(
    s: AsyncSession, port_ids: Sequence[str]
) -> tuple[dict[str, list[IpAllocation]], dict[str, list[str]]]:
    """Each port's addresses and security groups."""
    ips: dict[str, list[IpAllocation]] = defaultdict(list)
    groups: dict[str, list[str]] = defaultdict(list)
    if not port_ids:
        return ips, groups
    for a in await s.scalars(
        select(IpAllocation).where(IpAllocation.port_id.in_(port_ids)).order_by(IpAllocation.id)
    ):
        ips[a.port_id].append(a)
    rows = await s.execute(
        select(PortSecurityGroup.port_id, PortSecurityGroup.security_group_id).where(
            PortSecurityGroup.port_id.in_(port_ids)
        )
    )
    for port_id, group_id in rows:
        groups[port_id].append(group_id)
    return ips, groups


async def _insert_allocation(s: AsyncSession, subnet_id: str, port_id: str, address: str) -> bool:
    inserted = await s.scalar(
        upsert_insert(s, IpAllocation)
        .values(subnet_id=subnet_id, port_id=port_id, ip_address=address)
        .on_conflict_do_nothing()
        .returning(IpAllocation.id)
    )
    return inserted is not None


async def allocate_address(
    s: AsyncSession, subnet: SubnetRow, port_id: str, wanted: str | None, device_owner: str
) -> str:
    """Gives the port `wanted` (409 IpAddressAlreadyAllocated when held) or any free
    address of the subnet's pools (409 IpAddressGenerationFailure when none is left)."""
    net = addresses.parse_cidr(subnet.cidr)
    if wanted:
        address = str(addresses.host_address(net, wanted))
        if address == subnet.gateway_ip and device_owner not in ROUTER_OWNERS:
            raise Conflict(
                "IpAddressAlreadyAllocated",
                f"IP address {address} already allocated in subnet {subnet.id} (the gateway)",
            )
        if not await _insert_allocation(s, subnet.id, port_id, address):
            raise Conflict(
                "IpAddressAlreadyAllocated",
                f"IP address {address} already allocated in subnet {subnet.id}",
            )
        return address
    pools = addresses.pools_of(subnet.allocation_pools)
    rng = random.SystemRandom()
    for _ in range(_IP_ATTEMPTS):
        used = set(
            await s.scalars(
                select(IpAllocation.ip_address).where(IpAllocation.subnet_id == subnet.id)
            )
        )
        candidates = addresses.free_candidates(pools, used, subnet.gateway_ip)
        if not candidates:
            break
        # A random one of the lowest free addresses: racing creates rarely pick the same.
        address = rng.choice(candidates)
        if await _insert_allocation(s, subnet.id, port_id, address):
            return address
    raise Conflict(
        "IpAddressGenerationFailure",
        f"No more IP addresses available on network {subnet.network_id}.",
    )


async def _subnet_of_network(s: AsyncSession, network: Network, subnet_id: str) -> SubnetRow:
    row = await s.get(SubnetRow, subnet_id)
    if row is None or row.network_id != network.id:
        raise Invalid(
            f"Failed to create port on network {network.id}, because fixed_ips included invalid"
            f" subnet {subnet_id}."
        )
    return row


async def _subnet_holding(
    s: AsyncSession, subnets: Sequence[SubnetRow], network_id: str, address: str
) -> SubnetRow:
    ip = addresses.parse_ip(address)
    for sub in subnets:
        if ip in ipaddress.ip_network(sub.cidr):
            return sub
    raise Invalid(f"IP address {address} is not in any subnet of network {network_id}")


async def network_subnets(s: AsyncSession, network_ids: Sequence[str]) -> list[SubnetRow]:
    """The networks' subnets, oldest first (the order addresses are taken in)."""
    return list(
        await s.scalars(
            select(SubnetRow)
            .where(SubnetRow.network_id.in_(network_ids))
            .order_by(SubnetRow.created_at, SubnetRow.id)
        )
    )


async def _assign_addresses(
    s: AsyncSession,
    network: Network,
    port: Port,
    requested: Sequence[pb.FixedIp] | None,
    subnets: Sequence[SubnetRow] | None = None,
) -> None:
    """`subnets`: the network's subnets, oldest first, when the caller has read them."""
    if subnets is None:
        subnets = await network_subnets(s, [network.id])
    if requested is None:
        # No fixed_ips asked for: one address from the first subnet with a free one.
        last: Conflict | None = None
        for sub in subnets:
            try:
                await allocate_address(s, sub, port.id, None, port.device_owner)
                return
            except Conflict as exc:
                last = exc
        if last is not None:
            raise last
        return
    seen: set[tuple[str, str]] = set()
    for fixed in requested:
        if fixed.subnet_id:
            sub = await _subnet_of_network(s, network, fixed.subnet_id)
        elif fixed.ip_address:
            sub = await _subnet_holding(s, subnets, network.id, fixed.ip_address)
        else:
            raise Invalid("each fixed_ips entry needs a subnet_id or an ip_address")
        key = (sub.id, fixed.ip_address)
        if fixed.ip_address and key in seen:
            raise Invalid(f"duplicate fixed IP {fixed.ip_address}")
        seen.add(key)
        await allocate_address(s, sub, port.id, fixed.ip_address or None, port.device_owner)


async def _groups_for(
    s: AsyncSession, caller: Caller, project_id: str, ids: Sequence[str]
) -> list[str]:
    out: list[str] = []
    for group_id in dict.fromkeys(ids):
        found = await s.scalar(
            select(SecurityGroup.id).where(
                SecurityGroup.id == group_id,
                owned(caller, SecurityGroup.project_id),
            )
        )
        if found is None:
            raise not_found("SecurityGroup", group_id)
        out.append(found)
    return out


async def _new_mac(s: AsyncSession, wanted: str) -> str:
    if wanted:
        mac = addresses.normalise_mac(wanted)
        taken = await s.scalar(select(Port.id).where(Port.mac_address == mac))
        if taken is not None:
            raise Conflict(
                "MacAddressInUse",
                f"Unable to complete operation for network. The mac address {mac} is in use.",
            )
        return mac
    for _ in range(_MAC_ATTEMPTS):
        mac = addresses.random_mac()
        if await s.scalar(select(Port.id).where(Port.mac_address == mac)) is None:
            return mac
    raise Conflict("MacAddressGenerationFailure", "Unable to generate unique mac.")


# Neutron's max_allowed_address_pair.
MAX_ADDRESS_PAIRS = 10


def _pairs_need_port_security(has_pairs: bool, port_security: bool) -> None:
    if has_pairs and not port_security:
        raise Conflict(
            "AddressPairAndPortSecurityRequired",
            "Port Security must be enabled in order to have allowed address pairs on a port.",
        )


def address_pairs(
    pairs: Sequence[pb.AddressPair], mac: str, port_security: bool
) -> list[dict[str, str]]:
    """A port's allowed address pairs as stored, checked: IPv4 addresses or networks, each
    with a unicast MAC (the port's own unless given), each (address, MAC) once, at most
    MAX_ADDRESS_PAIRS, and only with port security (nothing to allow without it)."""
    _pairs_need_port_security(bool(pairs), port_security)
    if len(pairs) > MAX_ADDRESS_PAIRS:
        raise Invalid(
            f"Exceeded maximum amount of allowed address pairs {MAX_ADDRESS_PAIRS}",
            "AllowedAddressPairExhausted",
        )
    out: list[dict[str, str]] = []
    for pair in pairs:
        try:
            net = ipaddress.ip_network(pair.ip_address, strict=False)
        except ValueError:
            raise Invalid(
                f"'{pair.ip_address[:64]}' is not a valid IP address or network.",
                "HTTPBadRequest",
            ) from None
        if net.version != 4:
            raise Invalid("Only IPv4 allowed address pairs are supported.", "HTTPBadRequest")
        pair_mac = addresses.normalise_mac(pair.mac_address) if pair.mac_address else mac
        ip = str(net.network_address) if net.prefixlen == 32 else str(net)
        item = {"ip_address": ip, "mac_address": pair_mac}
        if item in out:
            raise Invalid(
                f"Request contains duplicate address pair: mac_address {pair_mac} ip_address {ip}.",
                "DuplicateAddressPairInRequest",
            )
        out.append(item)
    return out


async def create_port(
    s: AsyncSession,
    caller: Caller,
    req: pb.CreatePortRequest,
    default_group: str | None,
    ident: str,
    *,
    loaded: tuple[Network, Sequence[SubnetRow]] | None = None,
    bound_to: str = "",
) -> Port:
    """`default_group` is the port's project's default security group (made beforehand in
    its own transaction), used unless the request names groups. `loaded` is the port's
    network (as get_network gives it to the caller) and its subnets, oldest first, when
    the caller has read them. A port made `bound_to` a host is bound to it as it is made,
    the same port as one made and then bound (its revision counts the binding)."""
    p = req.port
    network = loaded[0] if loaded else await get_network(s, caller, p.network_id)
    if not network.shared and not caller.owns(network.project_id):
        # An external network is seen by all, but only its floating IPs are theirs.
        raise Forbidden(f"Tenant {caller.project_id} not allowed to create port on this network")
    project_id = caller.target_project(p.project_id)
    if p.binding_host_id and not caller.is_admin:
        raise Forbidden("Policy doesn't allow setting binding:host_id to be performed.")
    port_security = (
        p.port_security_enabled if req.port_security_enabled_set else network.port_security_enabled
    )
    if req.security_groups_set:
        groups = await _groups_for(s, caller, project_id, p.security_group_ids)
    else:
        groups = [default_group] if default_group and port_security else []
    if groups and not port_security:
        raise Conflict(
            "PortSecurityAndIPRequiredForSecurityGroups",
            "Port security must be enabled and port must have an IP address in order to use"
            " security groups.",
        )
    await quotas.check(s, project_id, "port")
    port = Port(
        id=ident,
        project_id=project_id,
        network_id=network.id,
        name=p.name,
        description=p.description,
        admin_state_up=p.admin_state_up if req.admin_state_up_set else True,
        mac_address=await _new_mac(s, p.mac_address),
        device_id=p.device_id,
        device_owner=p.device_owner,
        binding_host_id=p.binding_host_id,
        status="ACTIVE" if p.binding_host_id else "DOWN",
        port_security_enabled=port_security,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    if bound_to:
        port.binding_host_id = bound_to
        port.status = "ACTIVE"
        port.revision_number += 1
        port.updated_at = now()
    s.add(port)
    mac = port.mac_address
    port.allowed_address_pairs = address_pairs(p.allowed_address_pairs, mac, port_security)
    # The MAC is UNIQUE: a racing create with the same MAC fails here (IntegrityError,
    # turned into MacAddressInUse by the servicer), with nothing written.
    await s.flush()
    await _assign_addresses(
        s,
        network,
        port,
        list(p.fixed_ips) if req.fixed_ips_set else None,
        loaded[1] if loaded else None,
    )
    s.add_all(PortSecurityGroup(port_id=port.id, security_group_id=g) for g in groups)
    await security_changes.note_groups(s, groups)  # new members
    await s.flush()
    return port


async def update_port(s: AsyncSession, caller: Caller, req: pb.UpdatePortRequest) -> Port:
    port = await get_port(s, caller, req.id)
    if req.HasField("binding_host_id"):
        if not caller.is_admin:
            raise Forbidden("Policy doesn't allow setting binding:host_id to be performed.")
        port.binding_host_id = req.binding_host_id
        port.status = "ACTIVE" if req.binding_host_id else "DOWN"
    if req.HasField("name"):
        port.name = req.name
    if req.HasField("description"):
        port.description = req.description
    if req.HasField("admin_state_up"):
        port.admin_state_up = req.admin_state_up
    if req.HasField("device_id"):
        port.device_id = req.device_id
    if req.HasField("device_owner"):
        port.device_owner = req.device_owner
    if req.HasField("port_security_enabled"):
        port.port_security_enabled = req.port_security_enabled
    if req.HasField("allowed_address_pairs"):
        port.allowed_address_pairs = address_pairs(
            req.allowed_address_pairs.pairs, port.mac_address, port.port_security_enabled
        )
    else:
        _pairs_need_port_security(bool(port.allowed_address_pairs), port.port_security_enabled)
    # Groups the port leaves, joins or shows new addresses to: their members' rules change.
    touched_groups = await security_changes.groups_of(s, [port.id])
    if req.HasField("security_group_ids"):
        groups = await _groups_for(s, caller, port.project_id, req.security_group_ids.values)
        await s.execute(delete(PortSecurityGroup).where(PortSecurityGroup.port_id == port.id))
        await s.flush()
        s.add_all(PortSecurityGroup(port_id=port.id, security_group_id=g) for g in groups)
        touched_groups += groups
    if req.HasField("fixed_ips"):
        await _replace_addresses(s, caller, port, list(req.fixed_ips.fixed_ips))
    if req.HasField("security_group_ids") or req.HasField("fixed_ips"):
        await security_changes.note_groups(s, touched_groups)
    if (
        req.HasField("security_group_ids")
        or req.HasField("fixed_ips")
        or req.HasField("port_security_enabled")
        or req.HasField("allowed_address_pairs")
    ):
        await security_changes.note_ports(s, [port.id])
    has_groups = await s.scalar(
        select(PortSecurityGroup.port_id).where(PortSecurityGroup.port_id == port.id).limit(1)
    )
    if has_groups is not None and not port.port_security_enabled:
        raise Conflict(
            "PortSecurityAndIPRequiredForSecurityGroups",
            "Port security must be enabled and port must have an IP address in order to use"
            " security groups.",
        )
    port.revision_number += 1
    port.updated_at = now()
    await s.flush()
    return port


async def _replace_addresses(
    s: AsyncSession, caller: Caller, port: Port, wanted: Sequence[pb.FixedIp]
) -> None:
    """Keeps the addresses still asked for, frees the others, allocates the new ones."""
    current = list(await s.scalars(select(IpAllocation).where(IpAllocation.port_id == port.id)))
    keep: set[int] = set()
    new: list[pb.FixedIp] = []
    for fixed in wanted:
        match = next(
            (
                a
                for a in current
                if a.id not in keep
                and (not fixed.subnet_id or a.subnet_id == fixed.subnet_id)
                and fixed.ip_address
                and a.ip_address == fixed.ip_address
            ),
            None,
        )
        if match is not None:
            keep.add(match.id)
        else:
            new.append(fixed)
    for a in current:
        if a.id not in keep:
            await s.delete(a)
    await s.flush()
    network = await get_network(s, Caller(port.project_id, True), port.network_id)
    await _assign_addresses(s, network, port, new)


async def new_device_port(
    s: AsyncSession,
    network: Network,
    *,
    project_id: str,
    device_id: str,
    device_owner: str,
    fixed_ips: Sequence[pb.FixedIp] | None,
) -> Port:
    """A port the network domain makes for one of its own resources (a router's interface
    or gateway, a floating IP), with its addresses; no security groups."""
    port = Port(
        id=new_uuid(),
        project_id=project_id,
        network_id=network.id,
        name="",
        description="",
        admin_state_up=True,
        mac_address=await _new_mac(s, ""),
        device_id=device_id,
        device_owner=device_owner,
        binding_host_id="",
        status="DOWN",
        port_security_enabled=False,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    s.add(port)
    await s.flush()
    await _assign_addresses(s, network, port, fixed_ips)
    return port


async def forget_floating_ips(s: AsyncSession, port_ids: Sequence[str]) -> None:
    """A deleted port's floating IPs stay allocated, associated with nothing; their
    routers' host is told. The caller holds the ports' rows locked (FOR UPDATE): no
    floating IP can be associated with them meanwhile, so when none is now, nothing is
    left to update."""
    if port_ids:
        routers = list(
            await s.execute(select(FloatingIp.router_id).where(FloatingIp.port_id.in_(port_ids)))
        )
        if not routers:
            return
        router_changes.note(s, (r for (r,) in routers))
        await s.execute(
            update(FloatingIp)
            .where(FloatingIp.port_id.in_(port_ids))
            .values(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
        )


async def delete_port(s: AsyncSession, caller: Caller, port_id: str) -> None:
    port = await get_port(s, caller, port_id, lock=True)  # see forget_floating_ips
    if port.device_owner in SERVICE_OWNERS:
        raise Conflict(
            "ServicePortInUse",
            f"Port {port_id} cannot be deleted directly via the port API: has device owner"
            f" {port.device_owner}.",
        )
    await forget_floating_ips(s, [port.id])
    await security_changes.note_groups_of(s, [port.id])
    await s.delete(port)


async def delete_device_ports(
    s: AsyncSession, caller: Caller, device_id: str, keep: Sequence[str] = ()
) -> list[str]:
    """Deletes the device's ports, except those in `keep`: they are released (unbound,
    no device) and stay, as a port a user handed to a server does when it goes."""
    if not device_id:
        raise Invalid("device_id is required")
    query = select(Port.id).where(
        Port.device_id == device_id,
        owned(caller, Port.project_id),
        Port.device_owner.not_in(SERVICE_OWNERS),
    )
    if locks_rows(s):
        # Locked to the end: nothing can be associated with (or join a group through)
        # these ports between what is read of them below and their deletion.
        query = query.with_for_update()
    ids = list(await s.scalars(query))
    kept = [i for i in ids if i in set(keep)]
    if kept:
        await s.execute(
            update(Port)
            .where(Port.id.in_(kept))
            .values(
                device_id="",
                device_owner="",
                binding_host_id="",
                status="DOWN",
                revision_number=Port.revision_number + 1,
                updated_at=now(),
            )
        )
    ids = [i for i in ids if i not in set(keep)]
    await forget_floating_ips(s, ids)
    await security_changes.note_groups_of(s, ids)
    if ids:
        await s.execute(delete(Port).where(Port.id.in_(ids)))
    return ids


async def list_ports(
    s: AsyncSession,
    caller: Caller,
    network_id: str,
    device_id: str,
    page: Page,
    binding_host_id: str = "",
    device_ids: Sequence[str] = (),
) -> list[Port]:
    query = select(Port).where(owned(caller, Port.project_id))
    devices = [*device_ids, *([device_id] if device_id else [])]
    if devices:
        query = query.where(Port.device_id.in_(devices))
    if binding_host_id:
        query = query.where(Port.binding_host_id == binding_host_id)
    if network_id:
        query = query.where(Port.network_id == network_id)
    return list(await s.scalars(page.of(query, Port.id)))
