"""A conductor under test: real database, real gRPC, Loom's real scheduler on the same
database (tests/support/scheduler.py) and, for whole-path tests, a nats-server of the
test's own with the relay and workers running."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import nats.js.errors
import pytest
from loom.catalog.v1 import quotas_pb2_grpc
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import (
    consoles_pb2_grpc,
    fleet_pb2_grpc,
    migrations_pb2_grpc,
    servers_pb2_grpc,
)
from loom.network.v1 import network_pb2_grpc
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from controlplane.conductor import events, scheduling
from controlplane.conductor.context import Conductor, SchedulerClient
from controlplane.conductor.events import EventConsumer
from controlplane.conductor.outbox import Relay, Wakeup
from controlplane.conductor.scheduling import SchedulingWorker
from controlplane.conductor.service import registrations
from controlplane.config import LoomConfig, NatsConfig
from controlplane.db.engine import make_engine, session_factory
from controlplane.network.client import GrpcPortsClient, PortsClient
from controlplane.runtime import bus
from controlplane.runtime.grpcserver import insecure_or_secure_channel, start_grpc_server
from controlplane.runtime.natsserver import NatsServerProcess
from tests.conductor.factories import add, make_flavor, make_image
from tests.support import polling
from tests.support.scheduler import SchedulerUnderTest, running_scheduler

IMAGE_ID = "11111111-2222-3333-4444-555555555555"


@dataclass
class Harness:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    conductor: Conductor
    scheduler: SchedulerUnderTest
    servers: servers_pb2_grpc.ServersServiceStub
    quotas: quotas_pb2_grpc.QuotasServiceStub
    fleet: fleet_pb2_grpc.FleetServiceStub
    nc: NATS | None = None
    js: JetStreamContext | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    consoles: consoles_pb2_grpc.ConsolesServiceStub | None = None
    migrations: migrations_pb2_grpc.MigrationsServiceStub | None = None
    # The network service the conductor hosts, and the conductor's client of it.
    network: network_pb2_grpc.NetworkServiceStub | None = None
    ports: CountingPorts | None = None


class CountingPorts:
    """The conductor's real port client (GrpcPortsClient on the network service it
    serves), recording the name of every call made through it."""

    def __init__(self) -> None:
        self.inner: GrpcPortsClient | None = None
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        async def counted(**kw: Any) -> Any:
            self.calls.append(name)
            return await method(**kw)

        return counted


def conductor_config(**conductor: Any) -> LoomConfig:
    return LoomConfig.model_validate(
        {"conductor": {"max_build_attempts": 3, **conductor}, "scheduler": {"num_alternates": 2}}
    )


# The relay's poll interval in these tests: short, so the whole-path tests run quickly.
RELAY_POLL_S = 0.2
# One step of the conductor's path, with every service up (tests/support/polling.py).
STEP_S = polling.conductor_step_s(RELAY_POLL_S)


@contextlib.asynccontextmanager
async def harness(
    url: str, cfg: LoomConfig | None = None, *, older_scheduler: bool = False
) -> AsyncIterator[Harness]:
    """The conductor's gRPC services on the database at `url`, calling Loom's real
    scheduler on the same database through a channel made as the conductor's own is;
    `older_scheduler` serves that scheduler without SelectDestinationsBatch."""
    cfg = cfg or conductor_config()
    engine = make_engine(url)
    sessions = session_factory(engine)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sched = await stack.enter_async_context(
                running_scheduler(url, cfg.scheduler, older=older_scheduler)
            )
            yield await _serve_conductor(stack, engine, sessions, cfg, sched)
    finally:
        await engine.dispose()


async def _serve_conductor(
    stack: contextlib.AsyncExitStack,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    cfg: LoomConfig,
    sched: SchedulerUnderTest,
) -> Harness:
    channel = insecure_or_secure_channel(sched.target)
    stack.push_async_callback(channel.close)
    ports = CountingPorts()
    conductor = Conductor(
        sessions, cfg, Wakeup(), SchedulerClient(channel), cast(PortsClient, ports)
    )
    server = await start_grpc_server("127.0.0.1:0", registrations(conductor))
    stack.push_async_callback(server.stop, 0)
    client = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stack.push_async_callback(client.close)
    # The conductor reaches the network service it hosts as it would in production.
    ports.inner = GrpcPortsClient(client)
    await add(
        sessions,
        make_flavor("1"),
        make_flavor("big", vcpus=8, memory_mb=8192),
        make_image(IMAGE_ID),
    )
    return Harness(
        engine,
        sessions,
        conductor,
        sched,
        servers_pb2_grpc.ServersServiceStub(client),
        quotas_pb2_grpc.QuotasServiceStub(client),
        fleet_pb2_grpc.FleetServiceStub(client),
        consoles=consoles_pb2_grpc.ConsolesServiceStub(client),
        migrations=migrations_pb2_grpc.MigrationsServiceStub(client),
        network=network_pb2_grpc.NetworkServiceStub(client),
        ports=ports,
    )


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Harness]:
    async with harness(pg_url) as h:
        yield h


@contextlib.asynccontextmanager
async def running_workers(
    h: Harness,
    nats_url: str,
    *,
    relay_poll_s: float = RELAY_POLL_S,
    lanes: int = 1,
    events: bool = True,
) -> AsyncIterator[Harness]:
    """Connects `h` to the nats-server at `nats_url` and runs the conductor's relay, its
    scheduling worker (`lanes` lanes) and, unless `events` is False, its event consumer,
    until the block ends."""
    cfg = NatsConfig(duplicate_window_s=120)
    nc = await bus.connect(nats_url, cfg, f"test-{uuid.uuid4().hex[:6]}")
    js = nc.jetstream()
    await bus.ensure_streams(js, cfg)
    h.nc, h.js = nc, js
    stop = asyncio.Event()
    c = h.conductor
    h.tasks = [
        asyncio.create_task(Relay(c.sessions, js, c.wakeup, poll_interval=relay_poll_s).run(stop)),
        asyncio.create_task(SchedulingWorker(c, js).run(stop, lanes=lanes)),
    ]
    if events:
        h.tasks.append(asyncio.create_task(EventConsumer(c, js).run(stop)))
    try:
        yield h
    finally:
        stop.set()
        await asyncio.wait(h.tasks, timeout=5)
        for t in h.tasks:
            t.cancel()
        await nc.close()


@pytest.fixture
async def stack(pg_url: str, fresh_nats: NatsServerProcess) -> AsyncIterator[Harness]:
    """The conductor with its relay and workers running against a nats-server of its own."""
    async with harness(pg_url) as h, running_workers(h, fresh_nats.url):
        yield h


async def workers_waiting(h: Harness) -> bool:
    """True once the scheduling worker and the event consumer each have a pull request open
    on their stream: subscribed, and idle."""
    assert h.js is not None
    waiting = []
    for stream, durable in (
        (bus.CONDUCTOR_STREAM, scheduling.DURABLE),
        (bus.EVENTS_STREAM, events.DURABLE),
    ):
        try:
            info = await h.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            return False
        waiting.append((info.num_waiting or 0) > 0)
    return all(waiting)


class Agent:
    """Plays a node agent on NATS: reads its host's commands, publishes instance events."""

    def __init__(self, js: JetStreamContext, host: str) -> None:
        self.js = js
        self.host = host
        self._sub: JetStreamContext.PullSubscription | None = None

    async def next_command(self, within: float = STEP_S) -> tuple[str, bytes]:
        """The next command for this host: (verb, payload); acked."""
        if self._sub is None:
            self._sub = await self.js.pull_subscribe(
                bus.compute_host_filter(self.host),
                durable=f"agent-{self.host}",
                stream=bus.COMPUTE_STREAM,
            )
        msgs = await self._sub.fetch(1, timeout=within)
        await msgs[0].ack()
        return msgs[0].subject.rsplit(".", 1)[1], msgs[0].data

    async def build_command(self) -> agent_bus_pb2.BuildInstanceCommand:
        verb, data = await self.next_command()
        assert verb == "build"
        return agent_bus_pb2.BuildInstanceCommand.FromString(data)

    async def report(
        self, instance_id: str, kind: agent_bus_pb2.InstanceEventKind.ValueType, **kw: Any
    ) -> None:
        event = agent_bus_pb2.InstanceEvent(
            request_id=str(uuid.uuid4()), instance_id=instance_id, host=self.host, kind=kind, **kw
        )
        await self.js.publish(
            bus.instance_event_subject(self.host),
            event.SerializeToString(),
            headers={"Nats-Msg-Id": event.request_id},
        )


async def eventually(check: Any, within: float = STEP_S, what: str = "") -> Any:
    """Polls an async predicate until it returns something truthy and returns that; fails
    naming what it waited for (the predicate's name unless told) after `within` seconds."""
    return await polling.eventually(check, within, what or check.__name__)
