"""`loom conductor`: the compute service's gRPC server, outbox relay, scheduling worker, event
consumer and heartbeat recorder, in one process, until stop is set. The same gRPC server
hosts the domains named in conductor.hosted_domains (identity, image and catalog by default;
see registrations)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from loom.conductor.v1 import (
    consoles_pb2,
    consoles_pb2_grpc,
    diagnostics_pb2,
    diagnostics_pb2_grpc,
    fleet_pb2,
    fleet_pb2_grpc,
    migrations_pb2,
    migrations_pb2_grpc,
    server_groups_pb2,
    server_groups_pb2_grpc,
    servers_pb2,
    servers_pb2_grpc,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.catalog.service import CatalogDomain
from controlplane.conductor import events, scheduling
from controlplane.conductor import metrics as conductor_metrics
from controlplane.conductor.consoles import ConsolesServicer
from controlplane.conductor.context import Conductor, SchedulerClient
from controlplane.conductor.diagnostics import DiagnosticsServicer
from controlplane.conductor.events import EventConsumer
from controlplane.conductor.fleet import FleetServicer, HeartbeatRecorder
from controlplane.conductor.migrations import MigrationsServicer
from controlplane.conductor.moves import MoveSweeper
from controlplane.conductor.network_changes import (
    ChangeCourier,
    PortSecurityChanges,
    RouterChanges,
)
from controlplane.conductor.outbox import Relay, Wakeup
from controlplane.conductor.reclaim import Reclaimer
from controlplane.conductor.scheduling import SchedulingWorker
from controlplane.conductor.server_groups import ServerGroupsServicer
from controlplane.conductor.servers.servicer import ServersServicer
from controlplane.conductor.shelving import ShelvedOffloader
from controlplane.conductor.stranded import StrandedBuilds
from controlplane.config import HostableDomain, LoomConfig
from controlplane.db.engine import engine_for, session_factory
from controlplane.db.outage import DatabaseOutage, wait_until_reachable
from controlplane.identity.service import IdentityDomain
from controlplane.image.service import ImageDomain
from controlplane.network.client import GrpcPortsClient
from controlplane.network.service import NetworkDomain
from controlplane.runtime import bus, grpcserver
from controlplane.runtime.domain import DomainFactory, DomainService

log = logging.getLogger(__name__)


def compute_registrations(conductor: Conductor) -> list[grpcserver.Registration]:
    """The compute service's own servicers: servers, server groups, consoles, the fleet."""
    Registration = grpcserver.Registration
    return [
        Registration.of(
            ServersServicer(conductor), servers_pb2, servers_pb2_grpc, "ServersService"
        ),
        Registration.of(
            ServerGroupsServicer(
                conductor.sessions, conductor.cfg.conductor.default_quota_server_groups
            ),
            server_groups_pb2,
            server_groups_pb2_grpc,
            "ServerGroupsService",
        ),
        Registration.of(FleetServicer(conductor), fleet_pb2, fleet_pb2_grpc, "FleetService"),
        Registration.of(
            ConsolesServicer(conductor), consoles_pb2, consoles_pb2_grpc, "ConsolesService"
        ),
        Registration.of(
            MigrationsServicer(conductor), migrations_pb2, migrations_pb2_grpc, "MigrationsService"
        ),
        Registration.of(
            DiagnosticsServicer(conductor),
            diagnostics_pb2,
            diagnostics_pb2_grpc,
            "DiagnosticsService",
        ),
    ]


# The domains a conductor can host on its own gRPC port (conductor.hosted_domains).
HOSTABLE: dict[HostableDomain, DomainFactory] = {
    "identity": IdentityDomain,
    "image": ImageDomain,
    "catalog": CatalogDomain,
    "network": NetworkDomain,
}


def hosted_domains(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[DomainService]:
    """The domain services this conductor hosts, in the configured order."""
    return [HOSTABLE[name](sessions, cfg) for name in cfg.conductor.hosted_domains]


def registrations(
    conductor: Conductor, hosted: list[DomainService] | None = None
) -> list[grpcserver.Registration]:
    """What the conductor process serves: the compute service, and the domains it hosts
    (each in its own package, with its own tables; by default those the configuration
    names)."""
    if hosted is None:
        hosted = hosted_domains(conductor.sessions, conductor.cfg)
    return [*compute_registrations(conductor), *(r for d in hosted for r in d.registrations())]


async def serve(cfg: LoomConfig, stop: asyncio.Event, **_options: object) -> None:
    """Serves until stop is set, then stops taking requests, lets the workers finish their
    current batch and closes NATS, the scheduler channel and the database pool."""
    engine = engine_for(cfg.database, cfg.database_url)
    if not await wait_until_reachable(engine, stop, "conductor"):
        await engine.dispose()
        return
    sessions = session_factory(engine)
    # Standalone runs without a configured URL expect a nats-server on the default port.
    nats_url = cfg.nats.url or "nats://127.0.0.1:4222"
    watch = bus.ConnectionWatch()
    nc = await bus.connect(
        nats_url, cfg.nats, f"loom-conductor-{uuid.uuid4().hex[:6]}", watch=watch
    )
    js = nc.jetstream()
    await bus.ensure_streams(js, cfg.nats)
    channel = grpcserver.insecure_or_secure_channel(
        cfg.conductor.scheduler_target or cfg.scheduler.listen, cfg.tls
    )
    network_channel = grpcserver.insecure_or_secure_channel(cfg.domain_target("network"), cfg.tls)
    ports_client = GrpcPortsClient(network_channel)
    conductor = Conductor(sessions, cfg, Wakeup(), SchedulerClient(channel), ports_client)
    # The hosted domains seed their rows before serving: a create reads the default flavors
    # without ever calling the flavors service.
    hosted = hosted_domains(sessions, cfg)
    for domain in hosted:
        await domain.seed()
    running = await grpcserver.start_grpc_server(
        cfg.conductor.listen, registrations(conductor, hosted), cfg.tls, [DatabaseOutage()]
    )
    stop_watching = conductor_metrics.watch(
        sessions,
        js,
        [(bus.CONDUCTOR_STREAM, scheduling.DURABLE), (bus.EVENTS_STREAM, events.DURABLE)],
    )
    workers_stop = asyncio.Event()
    relay = Relay(sessions, js, conductor.wakeup, batch=cfg.conductor.outbox_batch, watch=watch)
    tasks = [
        asyncio.create_task(relay.run(workers_stop), name="outbox-relay"),
        asyncio.create_task(
            SchedulingWorker(conductor, js).run(workers_stop, cfg.conductor.scheduling_lanes),
            name="scheduling",
        ),
        asyncio.create_task(EventConsumer(conductor, js).run(workers_stop), name="events"),
        asyncio.create_task(HeartbeatRecorder(sessions).run(nc, workers_stop), name="heartbeats"),
        asyncio.create_task(StrandedBuilds(conductor).run(workers_stop), name="stranded-builds"),
        asyncio.create_task(MoveSweeper(conductor).run(workers_stop), name="moves"),
        asyncio.create_task(ShelvedOffloader(conductor).run(workers_stop), name="shelved-offload"),
        asyncio.create_task(Reclaimer(conductor).run(workers_stop), name="reclaim"),
        asyncio.create_task(
            ChangeCourier(sessions, PortSecurityChanges(ports_client), conductor.wakeup).run(
                workers_stop
            ),
            name="port-security",
        ),
        asyncio.create_task(
            ChangeCourier(sessions, RouterChanges(ports_client), conductor.wakeup).run(
                workers_stop
            ),
            name="routers",
        ),
    ]
    log.info("ready", extra={"service": "conductor", "grpc_port": running.port})
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter and task.exception() is not None:
                log.error("conductor worker %s died: %s", task.get_name(), task.exception())
        waiter.cancel()
    finally:
        stop_watching()
        await running.stop()
        workers_stop.set()
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        # The workers are done and their acks sent: flush and close (a drain would wait
        # on the idle pull subscriptions for its whole timeout).
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        await nc.close()
        await channel.close()
        await network_channel.close()
        await engine.dispose()
        log.info("stopped", extra={"service": "conductor"})
