"""The outbox: committed messages reach JetStream exactly once, across NATS outages and
conductor crashes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from loom.compute.v1 import agent_bus_pb2
from nats.js import JetStreamContext
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor import outbox
from controlplane.conductor.outbox import Outgoing, Relay, Wakeup
from controlplane.config import NatsConfig
from controlplane.db.engine import make_engine, session_factory
from controlplane.db.models import OutboxMessage
from controlplane.runtime import bus, tracing
from controlplane.runtime.natsserver import NatsServerProcess, start_nats_server
from tests.conductor.conftest import STEP_S, eventually
from tests.support import polling

NATS_CFG = NatsConfig(duplicate_window_s=120)


@pytest.fixture(params=["postgresql", "sqlite"])
async def sessions(
    request: pytest.FixtureRequest,
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    engine = make_engine(url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


def command(host: str, msg_id: str) -> Outgoing:
    payload = agent_bus_pb2.DeleteInstanceCommand(request_id=msg_id, instance_id=msg_id)
    return Outgoing(bus.compute_subject(host, "delete"), msg_id, payload)


async def queue(sessions: async_sessionmaker[AsyncSession], *messages: Outgoing) -> None:
    async with sessions() as s, s.begin():
        await outbox.add(s, *messages)


async def queued(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as s:
        return int((await s.execute(select(func.count(OutboxMessage.id)))).scalar_one())


async def published(js: JetStreamContext, host: str) -> list[str]:
    """The message ids on the host's subject, in stream order (read without consuming)."""
    sub = await js.pull_subscribe(
        bus.compute_host_filter(host), durable=None, stream=bus.COMPUTE_STREAM
    )
    out: list[str] = []
    try:
        # Until the consumer has nothing more to give: what is stored is read at once.
        while (await sub.consumer_info()).num_pending:
            for m in await sub.fetch(100, timeout=STEP_S):
                out.append((m.headers or {}).get("Nats-Msg-Id", ""))
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


async def test_messages_left_by_a_crashed_conductor_are_published_by_a_new_relay(
    sessions: async_sessionmaker[AsyncSession], fresh_nats: NatsServerProcess
) -> None:
    # The "crashed" conductor committed its rows and never ran its relay.
    await queue(sessions, *(command("crash-host", f"m-{i}") for i in range(5)))
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, NATS_CFG)
        relay = Relay(sessions, js, Wakeup(), batch=2)
        total = 0
        while (n := await relay.relay_once()) > 0:
            total += n
        assert total == 5
        assert await queued(sessions) == 0
        assert await published(js, "crash-host") == [f"m-{i}" for i in range(5)]
    finally:
        await nc.drain()


async def test_a_message_queued_inside_a_span_is_published_with_that_span_as_traceparent(
    sessions: async_sessionmaker[AsyncSession],
    fresh_nats: NatsServerProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    provider = TracerProvider()  # tracing on, spans kept nowhere
    monkeypatch.setattr(tracing, "_tracer", provider.get_tracer("test"))
    with tracing.span("request"):
        await queue(sessions, command("traced-host", "inside"))
        sender = tracing.current_traceparent()
    await queue(sessions, command("traced-host", "outside"))
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, NATS_CFG)
        assert await Relay(sessions, js, Wakeup()).relay_once() == 2
        sub = await js.pull_subscribe(
            bus.compute_host_filter("traced-host"), durable=None, stream=bus.COMPUTE_STREAM
        )
        headers = {(m.headers or {})["Nats-Msg-Id"]: m.headers for m in await sub.fetch(2)}
    finally:
        await nc.drain()
    assert sender is not None
    # Each also carries its outbox sequence, growing in the order they were queued.
    seqs = {k: int(h.pop(bus.COMMAND_SEQ_HEADER)) for k, h in headers.items() if h is not None}
    assert seqs["inside"] < seqs["outside"]
    assert headers["inside"] == {"Nats-Msg-Id": "inside", "traceparent": sender}
    assert headers["outside"] == {"Nats-Msg-Id": "outside"}


async def test_a_resent_message_id_is_dropped_by_jetstream(
    sessions: async_sessionmaker[AsyncSession], fresh_nats: NatsServerProcess
) -> None:
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, NATS_CFG)
        relay = Relay(sessions, js, Wakeup())
        await queue(sessions, command("dup-host", "same-id"))
        await relay.relay_once()
        # As after a crash between publish and delete: the row comes back and is sent again.
        await queue(sessions, command("dup-host", "same-id"))
        assert await relay.relay_once() == 1
        assert await published(js, "dup-host") == ["same-id"]
    finally:
        await nc.drain()


async def test_queueing_a_message_id_that_is_still_queued_keeps_one_row(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await queue(sessions, command("h", "once"))
    await queue(sessions, command("h", "once"))
    assert await queued(sessions) == 1


async def test_a_message_committed_while_nats_is_down_is_published_when_it_is_back(
    sessions: async_sessionmaker[AsyncSession],
    fresh_nats: NatsServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay")
    js = nc.jetstream()
    await bus.ensure_streams(js, NATS_CFG)
    wakeup = Wakeup()
    stop = asyncio.Event()
    relay = Relay(sessions, js, wakeup, poll_interval=0.2, publish_timeout=0.5)
    task = asyncio.create_task(relay.run(stop))
    restarted: NatsServerProcess | None = None
    try:
        fresh_nats.stop()
        msg_id = f"down-{uuid.uuid4().hex[:6]}"
        await queue(sessions, command("outage-host", msg_id))
        wakeup.set()

        async def failed_twice() -> bool:
            return sum("outbox relay failed" in r.msg for r in caplog.records) >= 2

        assert await eventually(failed_twice)
        assert await queued(sessions) == 1
        restarted = await asyncio.to_thread(
            start_nats_server, fresh_nats.store_dir, fresh_nats.port
        )

        async def drained() -> bool:
            return await queued(sessions) == 0

        assert await eventually(drained, polling.relay_after_nats_returns_s(0.5))
        assert await published(js, "outage-host") == [msg_id]
        # Each failure waited longer than the one before, from 0.2 s.
        delays = [float(r.args[0]) for r in caplog.records if "outbox relay failed" in r.msg]
        assert delays[:2] == [0.2, 0.4]
        assert delays == sorted(delays)
    finally:
        stop.set()
        await asyncio.wait([task], timeout=5)
        task.cancel()
        await nc.close()
        if restarted is not None:
            restarted.stop()


async def test_a_relay_asked_to_stop_during_an_outage_ends_and_leaves_the_rows_queued(
    sessions: async_sessionmaker[AsyncSession],
    fresh_nats: NatsServerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay-stop")
    js = nc.jetstream()
    await bus.ensure_streams(js, NATS_CFG)
    wakeup = Wakeup()
    stop = asyncio.Event()
    relay = Relay(sessions, js, wakeup, poll_interval=0.2, publish_timeout=0.5)
    task = asyncio.create_task(relay.run(stop))
    try:
        fresh_nats.stop()
        await queue(sessions, command("stop-host", f"stop-{uuid.uuid4().hex[:6]}"))
        wakeup.set()

        async def failed_twice() -> bool:
            return sum("outbox relay failed" in r.msg for r in caplog.records) >= 2

        assert await eventually(failed_twice)
        stop.set()
        wakeup.set()  # cuts the backoff short, as a commit would
        await asyncio.wait_for(task, timeout=STEP_S)
        assert task.exception() is None
        assert await queued(sessions) == 1
    finally:
        task.cancel()
        with contextlib.suppress(ConnectionResetError):
            await nc.close()


class AskedWatch(bus.ConnectionWatch):
    """The real watch, noting when the relay asks for the link it publishes on (after it
    has taken its batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    def current_link(self) -> asyncio.Event:
        self.asked.set()
        return super().current_link()


async def test_a_batch_in_flight_when_the_nats_connection_drops_is_given_back_at_once(
    sessions: async_sessionmaker[AsyncSession], fresh_nats: NatsServerProcess
) -> None:
    watch = AskedWatch()
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relay-drop", watch=watch)
    js = nc.jetstream()
    await bus.ensure_streams(js, NATS_CFG)
    # A publish timeout far beyond the wait below: only the dropped link can end the batch.
    relay = Relay(sessions, js, Wakeup(), publish_timeout=60, watch=watch)
    try:
        fresh_nats.stop()
        await queue(sessions, command("drop-host", f"drop-{uuid.uuid4().hex[:6]}"))
        in_flight = asyncio.create_task(relay.relay_once())

        async def publishing() -> bool:
            return watch.asked.is_set()

        assert await eventually(publishing)  # the batch is taken, its publishes are out
        assert not in_flight.done()
        watch.lost()  # what the client reports when the connection it published on drops
        with pytest.raises(outbox.PublishFailed):
            # At once, not after the publish timeout.
            await asyncio.wait_for(in_flight, timeout=STEP_S)
        assert await queued(sessions) == 1
    finally:
        # The server stays down: closing a client that is still reconnecting may report
        # the lost socket.
        with contextlib.suppress(ConnectionResetError):
            await nc.close()


async def test_two_relays_on_postgresql_never_take_the_same_rows(
    pg_url: str, fresh_nats: NatsServerProcess
) -> None:
    engine = make_engine(pg_url)
    sessions = session_factory(engine)
    await queue(sessions, *(command("shared-host", f"s-{i}") for i in range(60)))
    nc = await bus.connect(fresh_nats.url, NATS_CFG, "test-relays")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, NATS_CFG)
        relays = [Relay(sessions, js, Wakeup(), batch=7) for _ in range(2)]
        sent = 0
        while True:
            counts = await asyncio.gather(*(r.relay_once() for r in relays))
            sent += sum(counts)
            if not any(counts):
                break
        # Each row went out through exactly one relay: no resend needed JetStream's dedup.
        assert sent == 60
        assert sorted(await published(js, "shared-host")) == sorted(f"s-{i}" for i in range(60))
    finally:
        await nc.close()
        await engine.dispose()
