"""Routers: a gateway port on an external network and interface ports on tenant subnets,
each holding its subnet's gateway address. Every change a router's host must serve is
noted (router_changes) in its transaction; the L3 host's router namespace forwards and
NATs (router_feed.py, nodeagent/network/router.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from loom.network.v1 import network_pb2 as pb
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import FloatingIp, IpAllocation, Network, Port, Router
from controlplane.db.models import Subnet as SubnetRow
from controlplane.network import quotas, router_changes
from controlplane.network.errors import Conflict, Forbidden, Invalid, NotFound, not_found
from controlplane.network.networks import get_network, get_subnet
from controlplane.network.ports import (
    GATEWAY_OWNER,
    INTERFACE_OWNER,
    get_port,
    new_device_port,
)
from controlplane.network.scope import Caller, Page, owned
from controlplane.runtime.rpc import now


async def get_router(s: AsyncSession, caller: Caller, router_id: str) -> Router:
    row = await s.scalar(
        select(Router).where(Router.id == router_id, owned(caller, Router.project_id))
    )
    if row is None:
        raise not_found("Router", router_id)
    return row


async def list_routers(s: AsyncSession, caller: Caller, page: Page) -> list[Router]:
    query = select(Router).where(owned(caller, Router.project_id))
    return list(await s.scalars(page.of(query, Router.id)))


async def gateway_addresses(
    s: AsyncSession, routers: Sequence[Router]
) -> dict[str, list[IpAllocation]]:
    ports = [r.gateway_port_id for r in routers if r.gateway_port_id]
    out: dict[str, list[IpAllocation]] = {}
    if ports:
        for a in await s.scalars(
            select(IpAllocation).where(IpAllocation.port_id.in_(ports)).order_by(IpAllocation.id)
        ):
            out.setdefault(a.port_id, []).append(a)
    return out


async def _external_network(s: AsyncSession, caller: Caller, network_id: str) -> Network:
    network = await get_network(s, caller, network_id)
    if not network.router_external:
        raise Invalid(
            f"Bad router request: Network {network_id} is not a valid external network",
            "BadRequest",
        )
    return network


async def _drop_gateway(s: AsyncSession, router: Router) -> None:
    in_use = await s.scalar(select(exists().where(FloatingIp.router_id == router.id)))
    if in_use:
        raise Conflict(
            "RouterExternalGatewayInUseByFloatingIp",
            f"Gateway cannot be updated for router {router.id}, since a gateway to external"
            " network is required by one or more floating IPs.",
        )
    if router.gateway_port_id:
        router_changes.note(s, [router.id])
        port = await s.get(Port, router.gateway_port_id)
        router.gateway_port_id = None
        await s.flush()
        if port is not None:
            await s.delete(port)
    router.gateway_network_id = None


async def _set_gateway(
    s: AsyncSession, caller: Caller, router: Router, gw: pb.GatewayRequest
) -> None:
    if gw.external_fixed_ips and not caller.is_admin:
        raise Forbidden("Policy doesn't allow setting external_fixed_ips to be performed.")
    if not gw.network_id:
        await _drop_gateway(s, router)
        return
    network = await _external_network(s, caller, gw.network_id)
    if gw.HasField("enable_snat"):
        router.enable_snat = gw.enable_snat
    if router.gateway_network_id == network.id and not gw.external_fixed_ips:
        return
    await _drop_gateway(s, router)
    port = await new_device_port(
        s,
        network,
        project_id="",
        device_id=router.id,
        device_owner=GATEWAY_OWNER,
        fixed_ips=list(gw.external_fixed_ips) or None,
    )
    router.gateway_network_id = network.id
    router.gateway_port_id = port.id
    router_changes.note(s, [router.id])


async def create_router(
    s: AsyncSession, caller: Caller, req: pb.CreateRouterRequest, ident: str
) -> Router:
    r = req.router
    project_id = caller.target_project(r.project_id)
    await quotas.check(s, project_id, "router")
    router = Router(
        id=ident,
        project_id=project_id,
        name=r.name,
        description=r.description,
        admin_state_up=r.admin_state_up if req.admin_state_up_set else True,
        status="ACTIVE",
        gateway_network_id=None,
        gateway_port_id=None,
        enable_snat=True,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )
    s.add(router)
    await s.flush()
    if req.HasField("gateway"):
        await _set_gateway(s, caller, router, req.gateway)
        await s.flush()
    return router


async def update_router(s: AsyncSession, caller: Caller, req: pb.UpdateRouterRequest) -> Router:
    router = await get_router(s, caller, req.id)
    if req.HasField("name"):
        router.name = req.name
    if req.HasField("description"):
        router.description = req.description
    if req.HasField("admin_state_up"):
        router.admin_state_up = req.admin_state_up
    if req.HasField("gateway"):
        await _set_gateway(s, caller, router, req.gateway)
    if req.HasField("admin_state_up") or req.HasField("gateway"):
        router_changes.note(s, [router.id])
    router.revision_number += 1
    router.updated_at = now()
    await s.flush()
    return router


async def _interface_ports(s: AsyncSession, router_id: str) -> list[Port]:
    return list(
        await s.scalars(
            select(Port).where(Port.device_id == router_id, Port.device_owner == INTERFACE_OWNER)
        )
    )


async def delete_router(s: AsyncSession, caller: Caller, router_id: str) -> None:
    router = await get_router(s, caller, router_id)
    if await _interface_ports(s, router.id):
        raise Conflict("RouterInUse", f"Router {router_id} still has ports")
    await _drop_gateway(s, router)
    router_changes.note(s, [router.id])
    await s.delete(router)


async def _interface_subnets(s: AsyncSession, router_id: str) -> list[SubnetRow]:
    return list(
        await s.scalars(
            select(SubnetRow)
            .join(IpAllocation, IpAllocation.subnet_id == SubnetRow.id)
            .join(Port, Port.id == IpAllocation.port_id)
            .where(Port.device_id == router_id, Port.device_owner == INTERFACE_OWNER)
        )
    )


async def _check_no_overlap(s: AsyncSession, router: Router, adding: Sequence[SubnetRow]) -> None:
    attached = await _interface_subnets(s, router.id)
    for new in adding:
        for old in attached:
            if old.id == new.id:
                raise Invalid(
                    f"Bad router request: Router already has a port on subnet {new.id}.",
                    "BadRequest",
                )
            if ipaddress.ip_network(old.cidr).overlaps(ipaddress.ip_network(new.cidr)):
                raise Invalid(
                    f"Bad router request: Cidr {new.cidr} of subnet {new.id} overlaps with cidr"
                    f" {old.cidr} of subnet {old.id}.",
                    "BadRequest",
                )


async def _interface_pb(s: AsyncSession, router: Router, port: Port) -> pb.RouterInterface:
    subnets = list(
        await s.scalars(select(IpAllocation.subnet_id).where(IpAllocation.port_id == port.id))
    )
    return pb.RouterInterface(
        router_id=router.id,
        project_id=router.project_id,
        port_id=port.id,
        network_id=port.network_id,
        subnet_ids=subnets,
    )


async def add_interface(
    s: AsyncSession, caller: Caller, req: pb.AddRouterInterfaceRequest
) -> pb.RouterInterface:
    router = await get_router(s, caller, req.router_id)
    if bool(req.subnet_id) == bool(req.port_id):
        raise Invalid(
            "Bad router request: Either subnet_id or port_id must be specified.", "BadRequest"
        )
    if req.subnet_id:
        subnet = await get_subnet(s, caller, req.subnet_id)
        caller.require_owner(subnet.project_id, "add_router_interface")
        if not subnet.gateway_ip:
            raise Invalid(
                f"Bad router request: Subnet {subnet.id} does not have a gateway IP.", "BadRequest"
            )
        await _check_no_overlap(s, router, [subnet])
        network = await get_network(s, caller, subnet.network_id)
        port = await new_device_port(
            s,
            network,
            project_id=router.project_id,
            device_id=router.id,
            device_owner=INTERFACE_OWNER,
            fixed_ips=[pb.FixedIp(subnet_id=subnet.id, ip_address=subnet.gateway_ip)],
        )
    else:
        port = await get_port(s, caller, req.port_id)
        if port.device_id or port.device_owner:
            raise Conflict(
                "PortInUse",
                f"Unable to complete operation on port {port.id} for network"
                f" {port.network_id}. Port already has an attached device {port.device_id}.",
            )
        subnets = list(
            await s.scalars(
                select(SubnetRow)
                .join(IpAllocation, IpAllocation.subnet_id == SubnetRow.id)
                .where(IpAllocation.port_id == port.id)
            )
        )
        if not subnets:
            raise Invalid(
                "Bad router request: Router port must have at least one fixed IP.", "BadRequest"
            )
        await _check_no_overlap(s, router, subnets)
        port.device_id = router.id
        port.device_owner = INTERFACE_OWNER
        port.revision_number += 1
        port.updated_at = now()
    router.revision_number += 1
    router_changes.note(s, [router.id])
    await s.flush()
    return await _interface_pb(s, router, port)


async def remove_interface(
    s: AsyncSession, caller: Caller, req: pb.RemoveRouterInterfaceRequest
) -> pb.RouterInterface:
    router = await get_router(s, caller, req.router_id)
    if bool(req.subnet_id) == bool(req.port_id):
        raise Invalid(
            "Bad router request: Either subnet_id or port_id must be specified.", "BadRequest"
        )
    port: Port | None = None
    if req.port_id:
        port = await s.scalar(
            select(Port).where(
                Port.id == req.port_id,
                Port.device_id == router.id,
                Port.device_owner == INTERFACE_OWNER,
            )
        )
        if port is None:
            raise NotFound(
                "RouterInterfaceNotFound",
                f"Router {router.id} does not have an interface with id {req.port_id}",
            )
    else:
        port = await s.scalar(
            select(Port)
            .join(IpAllocation, IpAllocation.port_id == Port.id)
            .where(
                IpAllocation.subnet_id == req.subnet_id,
                Port.device_id == router.id,
                Port.device_owner == INTERFACE_OWNER,
            )
        )
        if port is None:
            raise NotFound(
                "RouterInterfaceNotFoundForSubnet",
                f"Router {router.id} has no interface on subnet {req.subnet_id}",
            )
    subnets = list(
        await s.scalars(select(IpAllocation.subnet_id).where(IpAllocation.port_id == port.id))
    )
    used = await s.scalar(
        select(
            exists().where(
                FloatingIp.router_id == router.id,
                FloatingIp.port_id.in_(
                    select(IpAllocation.port_id).where(IpAllocation.subnet_id.in_(subnets))
                ),
            )
        )
    )
    if used:
        raise Conflict(
            "RouterInterfaceInUseByFloatingIP",
            f"Router interface for subnet {', '.join(subnets)} on router {router.id} cannot be"
            " deleted, as it is required by one or more floating IPs.",
        )
    out = await _interface_pb(s, router, port)
    await s.delete(port)
    router.revision_number += 1
    router_changes.note(s, [router.id])
    await s.flush()
    return out


async def router_reaching(s: AsyncSession, external_network_id: str, subnet_id: str) -> str | None:
    """A router with a gateway on the external network and an interface on the subnet."""
    found = await s.scalar(
        select(Router.id)
        .join(Port, Port.device_id == Router.id)
        .join(IpAllocation, IpAllocation.port_id == Port.id)
        .where(
            Router.gateway_network_id == external_network_id,
            Port.device_owner == INTERFACE_OWNER,
            IpAllocation.subnet_id == subnet_id,
        )
        .order_by(Router.id)
        .limit(1)
    )
    return found
