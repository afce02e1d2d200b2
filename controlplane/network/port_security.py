"""Security changes on their way to the hosts.

A change to what a bound port's chains must say is noted in the transaction that makes it
(security_changes.py): a group's rules changed or its members came or went (a
port joined, left or changed addresses), or a port's own groups, addresses or port
security changed. The conductor takes the noted changes (`take`: claimed for a lease,
several callers take disjoint rows), queues each affected host's bindings as a
RefreshPortSecurityCommand in its outbox, then acknowledges them (`ack`). A caller that
dies before the ack leaves the rows to be taken again after the lease: a host may get a
binding twice, never miss one.

Every binding read for a host (at a bind or a take) carries a security_revision from
`next_revision`, taken before the binding is read: the counter's row stays locked to the
end of the transaction, so a later revision always describes a later state and a host
that keeps the newest revision of each port keeps the newest state, whatever order a
build and a refresh reach it in.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from loom.compute.v1 import agent_bus_pb2 as agent
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.db.models import PortSecurityChange
from controlplane.network import bindings, change_feed, security_changes

COUNTER = "port_security"


async def next_revision(s: AsyncSession) -> int:
    """The next security_revision; its row stays locked until the transaction ends."""
    return await change_feed.next_revision(s, COUNTER)


async def take(
    s: AsyncSession, limit: int, lease_s: float
) -> tuple[list[int], dict[str, list[agent.PortBinding]]]:
    """Claims changes and reads the bindings they affect, by host, at a new revision."""
    changes = await change_feed.claim(s, PortSecurityChange, limit, lease_s)
    if not changes:
        return [], {}
    group_ids = sorted({c.group_id for c in changes if c.group_id})
    port_ids = sorted({c.port_id for c in changes if c.port_id})
    revision = await next_revision(s)
    ports = await security_changes.affected_ports(s, group_ids, port_ids)
    out: dict[str, list[agent.PortBinding]] = defaultdict(list)
    if ports:
        for port, binding in zip(
            ports, await bindings.port_bindings(s, ports, revision), strict=True
        ):
            out[port.binding_host_id].append(binding)
    return [c.id for c in changes], dict(out)


async def ack(s: AsyncSession, change_ids: Sequence[int]) -> None:
    await change_feed.ack(s, PortSecurityChange, change_ids)
