"""Network changes carried to the hosts.

The network domain notes every change a host must apply: what a bound port's chains must
say (a rule, a group's members, a port's groups, addresses or port security), and what a
router must serve (its gateway, interfaces, floating IPs). Every conductor runs one
`ChangeCourier` per feed: it takes the noted changes (claimed for a lease, disjoint
between conductors), queues one command per affected host in the outbox
(RefreshPortSecurityCommand, RefreshRoutersCommand), commits, and then acknowledges the
changes. A conductor that dies before the ack leaves them to be taken again when the
lease ends: a host may apply a binding twice (its revision makes that a no-op), never
miss one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor import commands, outbox
from controlplane.conductor.outbox import Outgoing, Wakeup
from controlplane.network.client import PortSecurityFeed, RouterFeed

log = logging.getLogger(__name__)

BATCH = 256
LEASE_S = 30.0


class HostChangeFeed(Protocol):
    """One feed of noted changes, as the hosts' commands they call for."""

    kind: str

    async def take(self, *, limit: int, lease_s: float) -> tuple[list[int], list[Outgoing]]:
        """Claims changes; returns their ids and the commands for the affected hosts."""
        ...

    async def ack(self, change_ids: Sequence[int]) -> None: ...


class PortSecurityChanges:
    kind = "security"

    def __init__(self, feed: PortSecurityFeed) -> None:
        self._feed = feed

    async def take(self, *, limit: int, lease_s: float) -> tuple[list[int], list[Outgoing]]:
        taken = await self._feed.take_security_changes(limit=limit, lease_s=lease_s)
        return taken.change_ids, [
            commands.refresh_port_security(host, bindings)
            for host, bindings in sorted(taken.hosts.items())
        ]

    async def ack(self, change_ids: Sequence[int]) -> None:
        await self._feed.ack_security_changes(change_ids)


class RouterChanges:
    kind = "router"

    def __init__(self, feed: RouterFeed) -> None:
        self._feed = feed

    async def take(self, *, limit: int, lease_s: float) -> tuple[list[int], list[Outgoing]]:
        taken = await self._feed.take_router_changes(limit=limit, lease_s=lease_s)
        return taken.change_ids, [
            commands.refresh_routers(host, routers)
            for host, routers in sorted(taken.hosts.items())
            if routers
        ]

    async def ack(self, change_ids: Sequence[int]) -> None:
        await self._feed.ack_router_changes(change_ids)


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
        change_ids, outgoing = await self._feed.take(limit=BATCH, lease_s=LEASE_S)
        if not change_ids:
            return 0
        if outgoing:
            async with self._sessions.begin() as session:
                await outbox.add(session, *outgoing)
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
