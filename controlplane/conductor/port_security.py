"""Security changes carried to the hosts.

The network domain notes every change to what a bound port's chains must say (a rule, a
group's members, a port's groups, addresses or port security). Every conductor's
`PortSecurityCourier` takes the noted changes (TakePortSecurityChanges: claimed for a
lease, disjoint between conductors), queues one RefreshPortSecurityCommand per affected
host in the outbox, commits, and then acknowledges the changes. A conductor that dies
before the ack leaves them to be taken again when the lease ends: a host may apply a
binding twice (its revision makes that a no-op), never miss one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor import commands, outbox
from controlplane.conductor.outbox import Wakeup
from controlplane.network.client import PortSecurityFeed

log = logging.getLogger(__name__)

BATCH = 256
LEASE_S = 30.0


class PortSecurityCourier:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        feed: PortSecurityFeed,
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
        taken = await self._feed.take_security_changes(limit=BATCH, lease_s=LEASE_S)
        if not taken.change_ids:
            return 0
        if taken.hosts:
            async with self._sessions.begin() as session:
                await outbox.add(
                    session,
                    *(
                        commands.refresh_port_security(host, bindings)
                        for host, bindings in sorted(taken.hosts.items())
                    ),
                )
            self._wakeup.set()
        await self._feed.ack_security_changes(taken.change_ids)
        log.info(
            "security changes queued for hosts",
            extra={"changes": len(taken.change_ids), "hosts": sorted(taken.hosts)},
        )
        return len(taken.change_ids)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                while await self.carry_once() >= BATCH and not stop.is_set():
                    pass
            except Exception as exc:  # the network service or the database away: retry
                log.warning("security changes not carried yet: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll)
