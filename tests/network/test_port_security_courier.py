"""The compute service's courier carries security changes from the network domain to the
hosts' command subjects through its outbox, and loses none when it dies before the ack."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from loom.compute.v1 import agent_bus_pb2 as agent
from sqlalchemy import delete, select

from controlplane.conductor.network_changes import ChangeCourier, PortSecurityChanges
from controlplane.conductor.outbox import Wakeup
from controlplane.db.models import OutboxMessage
from controlplane.network.client import GrpcPortsClient, SecurityChanges
from tests.network.conftest import Net
from tests.network.test_port_security_feed import _bind


async def _queued(net: Net) -> list[tuple[str, agent.RefreshPortSecurityCommand]]:
    async with net.sessions() as s:
        rows = (
            await s.execute(
                select(OutboxMessage.subject, OutboxMessage.payload)
                .where(OutboxMessage.subject.like("loom.compute.%.port_security"))
                .order_by(OutboxMessage.id)
            )
        ).all()
    return [(subject, agent.RefreshPortSecurityCommand.FromString(p)) for subject, p in rows]


async def _clear_outbox(net: Net) -> None:
    async with net.sessions.begin() as s:
        await s.execute(delete(OutboxMessage))


async def test_each_affected_host_gets_one_refresh_command_in_the_outbox(net: Net) -> None:
    network_id, _ = await net.network_with_subnet("10.43.0.0/24")
    a = await _bind(net, network_id, "h1")
    b = await _bind(net, network_id, "h2")
    await _clear_outbox(net)
    wakeup = Wakeup()
    courier = ChangeCourier(net.sessions, PortSecurityChanges(GrpcPortsClient(net.channel)), wakeup)
    assert await courier.carry_once() > 0
    queued = dict(await _queued(net))
    assert set(queued) == {"loom.compute.h1.port_security", "loom.compute.h2.port_security"}
    assert [p.port_id for p in queued["loom.compute.h1.port_security"].ports] == [a.ports[0].id]
    assert [p.port_id for p in queued["loom.compute.h2.port_security"].ports] == [b.ports[0].id]
    # Acknowledged: a second pass has nothing to carry.
    assert await courier.carry_once() == 0


class _DiesBeforeTheAck:
    """The network feed of a conductor that dies after its outbox commit."""

    def __init__(self, real: GrpcPortsClient) -> None:
        self._real = real

    async def take_security_changes(self, *, limit: int, lease_s: float) -> SecurityChanges:
        return await self._real.take_security_changes(limit=limit, lease_s=0.5)

    async def ack_security_changes(self, change_ids: Sequence[int]) -> None:
        raise ConnectionError("the conductor died")


async def test_changes_a_dead_courier_did_not_acknowledge_are_carried_again(net: Net) -> None:
    network_id, _ = await net.network_with_subnet("10.44.0.0/24")
    a = await _bind(net, network_id, "h1")
    await _clear_outbox(net)
    client = GrpcPortsClient(net.channel)
    dying = ChangeCourier(net.sessions, PortSecurityChanges(_DiesBeforeTheAck(client)), Wakeup())
    with pytest.raises(ConnectionError):
        await dying.carry_once()
    first = await _queued(net)
    assert len(first) == 1
    await asyncio.sleep(0.8)  # the lease ends
    assert await ChangeCourier(net.sessions, PortSecurityChanges(client), Wakeup()).carry_once() > 0
    again = await _queued(net)
    assert len(again) == 2, "the second courier queued the change again, under a new id"
    assert again[1][1].ports[0].port_id == a.ports[0].id
    assert again[1][1].request_id != again[0][1].request_id
    assert again[1][1].ports[0].security_revision > again[0][1].ports[0].security_revision
