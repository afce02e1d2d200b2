"""Floating IPs: an address of an external network (held by a port of the network domain's
own, so IPAM keeps it unique), associated with a tenant port's fixed address through a
router that reaches both. Every change to a mapping is noted for the router's host
(router_changes), whose router namespace does the NAT."""

from __future__ import annotations

from loom.network.v1 import network_pb2 as pb
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import FloatingIp, IpAllocation, Port
from controlplane.network import quotas, router_changes
from controlplane.network.errors import Conflict, Forbidden, Invalid, NotFound, not_found
from controlplane.network.networks import FLOATING_OWNER, get_network
from controlplane.network.ports import get_port, new_device_port
from controlplane.network.routers import router_reaching
from controlplane.network.scope import Caller, Page, owned
from controlplane.runtime.rpc import now


async def get_floating_ip(s: AsyncSession, caller: Caller, fip_id: str) -> FloatingIp:
    row = await s.scalar(
        select(FloatingIp).where(FloatingIp.id == fip_id, owned(caller, FloatingIp.project_id))
    )
    if row is None:
        raise not_found("FloatingIP", fip_id)
    return row


async def list_floating_ips(s: AsyncSession, caller: Caller, page: Page) -> list[FloatingIp]:
    query = select(FloatingIp).where(owned(caller, FloatingIp.project_id))
    return list(await s.scalars(page.of(query, FloatingIp.id)))


async def _associate(
    s: AsyncSession, caller: Caller, fip: FloatingIp, port_id: str, fixed_ip: str
) -> None:
    port = await get_port(s, caller, port_id)
    if not caller.is_admin and port.project_id != fip.project_id:
        raise not_found("Port", port_id)
    addresses = list(
        await s.scalars(
            select(IpAllocation).where(IpAllocation.port_id == port.id).order_by(IpAllocation.id)
        )
    )
    if fixed_ip:
        chosen = next((a for a in addresses if a.ip_address == fixed_ip), None)
        if chosen is None:
            raise Invalid(
                f"Bad floatingip request: Port {port.id} does not have fixed ip {fixed_ip}.",
                "BadRequest",
            )
    elif addresses:
        chosen = addresses[0]
    else:
        raise Invalid(
            f"Bad floatingip request: Port {port.id} does not have any IP addresses.",
            "BadRequest",
        )
    taken = await s.scalar(
        select(FloatingIp.id).where(
            FloatingIp.port_id == port.id,
            FloatingIp.fixed_ip_address == chosen.ip_address,
            FloatingIp.id != fip.id,
        )
    )
    if taken is not None:
        raise Conflict(
            "FloatingIPPortAlreadyAssociated",
            f"Cannot associate floating IP {fip.floating_ip_address} ({fip.id}) with port"
            f" {port.id} using fixed IP {chosen.ip_address}, as that fixed IP already has a"
            f" floating IP on external network {fip.floating_network_id}.",
        )
    router_id = await router_reaching(s, fip.floating_network_id, chosen.subnet_id)
    if router_id is None:
        raise NotFound(
            "ExternalGatewayForFloatingIPNotFound",
            f"External network {fip.floating_network_id} is not reachable from subnet"
            f" {chosen.subnet_id}. Therefore, cannot associate Port {port.id} with a Floating IP.",
        )
    router_changes.note(s, [fip.router_id, router_id])
    await router_changes.note_port_devices(s, [fip.port_id, port.id])
    fip.port_id = port.id
    fip.fixed_ip_address = chosen.ip_address
    fip.router_id = router_id
    fip.status = "DOWN"  # until its router's host is sent the mapping (router_feed.ack)


async def _disassociate(s: AsyncSession, fip: FloatingIp) -> None:
    router_changes.note(s, [fip.router_id])
    await router_changes.note_port_devices(s, [fip.port_id])
    fip.port_id = None
    fip.fixed_ip_address = None
    fip.router_id = None
    fip.status = "DOWN"


async def create_floating_ip(
    s: AsyncSession, caller: Caller, req: pb.CreateFloatingIpRequest, ident: str
) -> FloatingIp:
    f = req.floating_ip
    network = await get_network(s, caller, f.floating_network_id)
    if not network.router_external:
        raise Invalid(
            f"Bad floatingip request: Network {network.id} is not a valid external network.",
            "BadRequest",
        )
    if f.floating_ip_address and not caller.is_admin:
        raise Forbidden("Policy doesn't allow setting floating_ip_address to be performed.")
    project_id = caller.target_project(f.project_id)
    await quotas.check(s, project_id, "floatingip")
    fip_id = ident
    wanted = None
    if f.floating_ip_address or req.subnet_id:
        wanted = [pb.FixedIp(subnet_id=req.subnet_id, ip_address=f.floating_ip_address)]
    port = await new_device_port(
        s, network, project_id="", device_id=fip_id, device_owner=FLOATING_OWNER, fixed_ips=wanted
    )
    address = await s.scalar(select(IpAllocation.ip_address).where(IpAllocation.port_id == port.id))
    if address is None:
        raise Invalid(
            f"Bad floatingip request: Network {network.id} has no subnet to take an address from.",
            "BadRequest",
        )
    fip = FloatingIp(
        id=fip_id,
        project_id=project_id,
        floating_network_id=network.id,
        floating_port_id=port.id,
        floating_ip_address=address,
        port_id=None,
        fixed_ip_address=None,
        router_id=None,
        status="DOWN",
        description=f.description,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    s.add(fip)
    await s.flush()
    if f.port_id:
        await _associate(s, caller, fip, f.port_id, f.fixed_ip_address)
        await s.flush()
    return fip


async def update_floating_ip(
    s: AsyncSession, caller: Caller, req: pb.UpdateFloatingIpRequest
) -> FloatingIp:
    fip = await get_floating_ip(s, caller, req.id)
    if req.HasField("port_id"):
        if req.port_id:
            await _associate(s, caller, fip, req.port_id, req.fixed_ip_address)
        else:
            await _disassociate(s, fip)
    if req.HasField("description"):
        fip.description = req.description
    fip.revision_number += 1
    fip.updated_at = now()
    await s.flush()
    return fip


async def delete_floating_ip(s: AsyncSession, caller: Caller, fip_id: str) -> None:
    fip = await get_floating_ip(s, caller, fip_id)
    port = await s.get(Port, fip.floating_port_id)
    router_changes.note(s, [fip.router_id])
    await router_changes.note_port_devices(s, [fip.port_id])
    await s.delete(fip)
    await s.flush()
    if port is not None:
        await s.delete(port)
