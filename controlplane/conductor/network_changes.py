"""Network changes carried to the hosts.

The network domain notes every change a host must apply: what a bound port's chains must
say (a rule, a group's members, a port's groups, addresses or port security), and what a
router must serve (its gateway, interfaces, floating IPs). Every conductor runs one
`ChangeCourier` per feed: it takes the noted changes (claimed for a lease, disjoint
between conductors), queues one command per affected host in the outbox
(RefreshPortSecurityCommand, RefreshRoutersCommand), commits, and then acknowledges the
changes. The router feed also names the servers whose floating IPs changed: their
`addresses` are written in the same transaction. A conductor that dies before the ack
leaves them to be taken again when the lease ends: a host may apply a binding twice (its
revision makes that a no-op), never miss one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from loom.compute.v1 import agent_bus_pb2
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor import commands, outbox
from controlplane.conductor.outbox import Outgoing, Wakeup
from controlplane.db.models import Instance
from controlplane.network.client import PortSecurityFeed, RouterFeed

log = logging.getLogger(__name__)

BATCH = 256
LEASE_S = 30.0


@dataclass(frozen=True)
class Taken:
    """Changes taken: their ids, the commands for the affected hosts, and what the compute
    service records of them itself (written with the commands, in one transaction)."""

    change_ids: list[int]
    outgoing: list[Outgoing]
    record: Callable[[AsyncSession], Awaitable[None]] | None = None


class HostChangeFeed(Protocol):
    """One feed of noted changes, as the hosts' commands they call for."""

    kind: str

    async def take(self, *, limit: int, lease_s: float) -> Taken:
        """Claims changes; returns them as Taken."""
        ...

    async def ack(self, change_ids: Sequence[int]) -> None: ...


class PortSecurityChanges:
    kind = "security"

    def __init__(self, feed: PortSecurityFeed) -> None:
        self._feed = feed

    async def take(self, *, limit: int, lease_s: float) -> Taken:
        taken = await self._feed.take_security_changes(limit=limit, lease_s=lease_s)
        return Taken(
            taken.change_ids,
            [
                commands.refresh_port_security(host, bindings)
                for host, bindings in sorted(taken.hosts.items())
            ],
        )

    async def ack(self, change_ids: Sequence[int]) -> None:
        await self._feed.ack_security_changes(change_ids)


class RouterChanges:
    kind = "router"

    def __init__(self, feed: RouterFeed) -> None:
        self._feed = feed

    async def take(self, *, limit: int, lease_s: float) -> Taken:
        taken = await self._feed.take_router_changes(limit=limit, lease_s=lease_s)
        devices = taken.devices

        async def record(session: AsyncSession) -> None:
            await show_floating_ips(session, devices)

        return Taken(
            taken.change_ids,
            [
                commands.refresh_routers(host, routers)
                for host, routers in sorted(taken.hosts.items())
                if routers
            ],
            record if devices else None,
        )

    async def ack(self, change_ids: Sequence[int]) -> None:
        await self._feed.ack_router_changes(change_ids)


async def show_floating_ips(
    session: AsyncSession, devices: Mapping[str, Sequence[agent_bus_pb2.FloatingIpMapping]]
) -> None:
    """Each server's addresses with its floating IPs now: each right after the fixed
    address it maps to (type `floating`, that port's MAC), as Nova lists them."""
    rows = await session.scalars(
        select(Instance).where(Instance.uuid.in_(list(devices)), Instance.deleted.is_(False))
    )
    for row in rows:
        by_fixed: dict[str, list[str]] = {}
        for f in devices[row.uuid]:
            by_fixed.setdefault(f.fixed_ip_address, []).append(f.floating_ip_address)
        shown: list[dict[str, Any]] = []
        for a in row.addresses or []:
            if a.get("type") == "floating":
                continue
            shown.append(a)
            shown.extend(
                {**a, "address": fip, "type": "floating"}
                for fip in by_fixed.get(str(a.get("address")), [])
            )
        if shown != list(row.addresses or []):
            row.addresses = shown


class ChangeCourier:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        feed: HostChangeFeed,
        wakeup: Wakeup,
        *,
        poll_s: float = 0.5,
    ) -> None:
        self._sessions = sessions
        self._feed = feed
        self._wakeup = wakeup
        self._poll = poll_s

    async def carry_once(self) -> int:
        """Takes one batch of changes and queues their hosts' commands; returns how many
        changes it took (0: none were waiting)."""
        taken = await self._feed.take(limit=BATCH, lease_s=LEASE_S)
        change_ids, outgoing = taken.change_ids, taken.outgoing
        if not change_ids:
            return 0
        if outgoing or taken.record is not None:
            async with self._sessions.begin() as session:
                await outbox.add(session, *outgoing)
                if taken.record is not None:
                    await taken.record(session)
            if outgoing:
                self._wakeup.set()
        await self._feed.ack(change_ids)
        log.info(
            "network changes queued for hosts",
            extra={
                "kind": self._feed.kind,
                "changes": len(change_ids),
                "subjects": sorted(o.subject for o in outgoing),
            },
        )
        return len(change_ids)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.carry_once() >= BATCH and not stop.is_set():
                    pass
            except Exception as exc:  # the network service or the database away: retry
                log.warning("%s changes not carried yet: %s", self._feed.kind, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)
