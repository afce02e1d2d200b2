"""The conductor's metrics: boots counted by how they ended, where the ending is committed,
and the outbox read at scrape time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from prometheus_client import REGISTRY
from sqlalchemy import select

from controlplane.conductor import metrics as conductor_metrics
from controlplane.conductor.outbox import Outgoing, add
from controlplane.config import NatsConfig
from controlplane.db.dialect import as_utc as aware
from controlplane.db.models import OutboxMessage
from controlplane.runtime import bus
from controlplane.runtime.metrics import serve_metrics
from controlplane.runtime.natsserver import NatsServerProcess
from tests.conductor.conftest import Agent, Harness
from tests.conductor.test_create import create_request
from tests.conductor.test_flow import active_server, boot, wait_for

K = agent_bus_pb2.InstanceEventKind
S = servers_pb2.ServerStatus


def boots(outcome: str) -> float:
    return REGISTRY.get_sample_value("loom_boots_total", {"outcome": outcome}) or 0.0


async def test_a_build_that_succeeds_counts_one_active_boot(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    before = boots("active")
    await active_server(stack)
    assert boots("active") - before == 1


async def test_failed_builds_count_a_reschedule_each_then_one_error(stack: Harness) -> None:
    for name in ("host-a", "host-b", "host-c"):
        await stack.scheduler.add_host(name)
    before = {o: boots(o) for o in ("active", "rescheduled", "error")}
    sid, agent, _ = await boot(stack)
    assert stack.js is not None
    for attempt in (1, 2, 3):
        await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=attempt)
        if attempt == 3:
            break
        moved = await wait_for(stack, sid, lambda s, a=attempt: s.attempts == a + 1)
        # A redelivered failure of the attempt just settled counts nothing more.
        await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=attempt)
        agent = Agent(stack.js, moved.host)
        await agent.build_command()
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert boots("rescheduled") - before["rescheduled"] == 2
    assert boots("error") - before["error"] == 1
    assert boots("active") == before["active"]


async def test_no_valid_host_counts_as_its_own_outcome(stack: Harness) -> None:
    await stack.scheduler.add_host("tiny", memory_mb=128)
    before = boots("no_valid_host")
    resp = await stack.servers.CreateServers(create_request())
    await wait_for(stack, resp.servers[0].id, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert boots("no_valid_host") - before == 1


async def test_a_scrape_reads_the_outbox_depth_the_age_of_its_oldest_row_and_consumer_lag(
    pg: Harness, fresh_nats: NatsServerProcess
) -> None:
    nc = await bus.connect(fresh_nats.url, NatsConfig(), "test-metrics")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, NatsConfig())
        # Two schedule messages wait for a consumer that has not pulled yet.
        await js.add_consumer(bus.CONDUCTOR_STREAM, durable_name="conductor-schedule")
        for i in range(2):
            await js.publish(
                bus.conductor_subject("schedule"), b"x", headers={"Nats-Msg-Id": f"{i}"}
            )
        async with pg.sessions() as session:
            await add(
                session,
                *(
                    Outgoing(bus.conductor_subject("schedule"), f"m-{i}", servers_pb2.Server())
                    for i in range(3)
                ),
            )
            await session.commit()
        stop = conductor_metrics.watch(
            pg.sessions,
            js,
            [
                (bus.CONDUCTOR_STREAM, "conductor-schedule"),
                (bus.EVENTS_STREAM, "conductor-events"),
            ],
        )
        endpoint = serve_metrics("conductor-test", "127.0.0.1:0")
        assert endpoint is not None
        async with pg.sessions() as session:
            oldest = aware(
                (
                    await session.execute(
                        select(OutboxMessage.created_at).order_by(OutboxMessage.id).limit(1)
                    )
                ).scalar_one()
            )
        try:
            before = datetime.now(UTC)
            text = (await asyncio.to_thread(httpx.get, endpoint.url, timeout=10)).text
            after = datetime.now(UTC)
        finally:
            stop()
    finally:
        await nc.close()
    assert "loom_outbox_messages 3.0" in text
    age = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("loom_outbox_oldest_age_seconds ")
    )
    # The oldest row's age in seconds, as the clock read it during the scrape.
    assert (before - oldest).total_seconds() <= age <= (after - oldest).total_seconds()
    assert (
        'loom_jetstream_consumer_pending_messages{consumer="conductor-schedule",'
        'stream="LOOM_CONDUCTOR"} 2.0' in text
    )
    # The events consumer does not exist yet: its family is announced, with no series.
    assert "# TYPE loom_jetstream_consumer_pending_messages gauge" in text
    assert 'consumer="conductor-events"' not in text
