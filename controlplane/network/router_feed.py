"""Router changes on their way to the L3 host.

Every change to what a router's host must serve is noted in the transaction that makes
it (router_changes.note): a gateway set or cleared, an interface added or removed, the
admin state, a floating IP associated, moved or released (also when its port goes), the
router deleted. The conductor takes the noted changes (`take`: claimed for a lease),
queues the routers' bindings for the host that serves routers (`network.l3_host`) as a
RefreshRoutersCommand in its outbox, then acknowledges them (`ack`), which marks the
routers' associated floating IPs ACTIVE (or DOWN) and their own ports (gateway, interfaces)
ACTIVE. A floating IP's change also names its ports'
devices: the take gives each such server's floating IPs now, for the compute service's
addresses. Each binding carries a revision from the `router` counter, taken before the
routers are read, so the host that keeps the newest keeps the newest state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from loom.compute.v1 import agent_bus_pb2 as agent
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import FloatingIp, Port, Router, RouterChange
from controlplane.network import bindings, change_feed
from controlplane.network.ports import GATEWAY_OWNER, INTERFACE_OWNER

COUNTER = "router"
ROUTER_PORT_OWNERS = (GATEWAY_OWNER, INTERFACE_OWNER)


def _leg(binding: agent.PortBinding) -> agent.RouterLeg:
    return agent.RouterLeg(
        port_id=binding.port_id,
        network_id=binding.network_id,
        segmentation_id=binding.segmentation_id,
        mac_address=binding.mac_address,
        fixed_ips=list(binding.fixed_ips),
        mtu=binding.mtu,
    )


async def router_bindings(
    s: AsyncSession, router_ids: Sequence[str], revision: int
) -> list[agent.RouterBinding]:
    """The current binding of each router, in order; a router that is gone (or has
    neither gateway nor interfaces) says `deleted`."""
    routers = {r.id: r for r in await s.scalars(select(Router).where(Router.id.in_(router_ids)))}
    legs = list(
        await s.scalars(
            select(Port)
            .where(Port.device_id.in_(list(routers)))
            .where(
                (Port.device_owner == INTERFACE_OWNER)
                | Port.id.in_([r.gateway_port_id for r in routers.values() if r.gateway_port_id])
            )
            .order_by(Port.id)
        )
    )
    leg_of = {
        b.port_id: _leg(b)
        for b in (await bindings.port_bindings(s, legs, revision) if legs else [])
    }
    fips = list(
        await s.scalars(
            select(FloatingIp)
            .where(FloatingIp.router_id.in_(list(routers)), FloatingIp.port_id.is_not(None))
            .order_by(FloatingIp.floating_ip_address)
        )
    )
    out = []
    for router_id in router_ids:
        router = routers.get(router_id)
        interfaces = [
            leg_of[p.id]
            for p in legs
            if router is not None and p.device_id == router.id and p.id != router.gateway_port_id
        ]
        gateway = leg_of.get(router.gateway_port_id or "") if router is not None else None
        if router is None or (gateway is None and not interfaces):
            out.append(agent.RouterBinding(router_id=router_id, revision=revision, deleted=True))
            continue
        out.append(
            agent.RouterBinding(
                router_id=router.id,
                revision=revision,
                admin_state_up=router.admin_state_up,
                gateway=gateway,
                enable_snat=router.enable_snat,
                interfaces=interfaces,
                floating_ips=[
                    agent.FloatingIpMapping(
                        floating_ip_id=f.id,
                        floating_ip_address=f.floating_ip_address,
                        fixed_ip_address=f.fixed_ip_address or "",
                        port_id=f.port_id or "",
                    )
                    for f in fips
                    if f.router_id == router.id and gateway is not None
                ],
            )
        )
    return out


@dataclass(frozen=True)
class RouterTake:
    change_ids: list[int]
    hosts: dict[str, list[agent.RouterBinding]]
    devices: dict[str, list[agent.FloatingIpMapping]]


async def device_floating_ips(
    s: AsyncSession, device_ids: Sequence[str]
) -> dict[str, list[agent.FloatingIpMapping]]:
    """Each device's floating IPs now (an empty list for one that has none left)."""
    out: dict[str, list[agent.FloatingIpMapping]] = {d: [] for d in device_ids}
    if device_ids:
        rows = await s.execute(
            select(Port.device_id, FloatingIp)
            .join(FloatingIp, FloatingIp.port_id == Port.id)
            .where(Port.device_id.in_(list(device_ids)))
            .order_by(FloatingIp.floating_ip_address)
        )
        for device_id, f in rows:
            out[device_id].append(
                agent.FloatingIpMapping(
                    floating_ip_id=f.id,
                    floating_ip_address=f.floating_ip_address,
                    fixed_ip_address=f.fixed_ip_address or "",
                    port_id=f.port_id or "",
                )
            )
    return out


async def take(s: AsyncSession, limit: int, lease_s: float, l3_host: str) -> RouterTake:
    """Claims changes and reads the changed routers' bindings at a new revision, for the
    L3 host (none when no host serves routers: the changes are then only forgotten), and
    the changed devices' floating IPs."""
    changes = await change_feed.claim(s, RouterChange, limit, lease_s)
    if not changes:
        return RouterTake([], {}, {})
    router_ids = sorted({c.router_id for c in changes if c.router_id})
    device_ids = sorted({c.device_id for c in changes if c.device_id})
    hosts: dict[str, list[agent.RouterBinding]] = {}
    if router_ids and l3_host:
        revision = await change_feed.next_revision(s, COUNTER)
        hosts[l3_host] = await router_bindings(s, router_ids, revision)
    devices = await device_floating_ips(s, device_ids)
    return RouterTake([c.id for c in changes], hosts, devices)


async def ack(s: AsyncSession, change_ids: Sequence[int], *, served: bool) -> None:
    """Forgets the changes. Their routers' associated floating IPs are now ACTIVE where the
    router is up with a gateway, DOWN otherwise; and when a host serves routers (`served`),
    the routers' own ports (gateway, interfaces) are ACTIVE: sent to their host, whatever
    the router's admin state (the host takes an admin-down router's namespace down, and its
    ports stay ACTIVE, as the API shows them)."""
    if not change_ids:
        return
    router_ids = [
        r
        for r in await s.scalars(
            select(RouterChange.router_id).where(RouterChange.id.in_(change_ids))
        )
        if r
    ]
    await change_feed.ack(s, RouterChange, change_ids)
    if router_ids:
        up = select(Router.id).where(
            Router.id.in_(router_ids),
            Router.admin_state_up.is_(True),
            Router.gateway_port_id.is_not(None),
        )
        await s.execute(
            update(FloatingIp)
            .where(FloatingIp.router_id.in_(up), FloatingIp.port_id.is_not(None))
            .values(status="ACTIVE")
        )
        await s.execute(
            update(FloatingIp)
            .where(FloatingIp.router_id.in_(router_ids), FloatingIp.router_id.not_in(up))
            .values(status="DOWN")
        )
        if served:
            await s.execute(
                update(Port)
                .where(
                    Port.device_id.in_(router_ids),
                    Port.device_owner.in_(ROUTER_PORT_OWNERS),
                    # Only the new ones: every later change of the router rewrote them all.
                    Port.status != "ACTIVE",
                )
                .values(status="ACTIVE")
            )
