"""`loom scheduler`: the gRPC SchedulerService, its NATS listeners and housekeeping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from loom.compute.v1 import agent_bus_pb2
from loom.scheduler.v1 import (
    aggregates_pb2,
    aggregates_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from nats.aio.client import Client as NATS

from controlplane.config import LoomConfig
from controlplane.db.engine import engine_for
from controlplane.db.outage import DatabaseOutage, wait_until_reachable
from controlplane.runtime import bus
from controlplane.runtime.grpcserver import Registration, start_grpc_server
from controlplane.scheduler import convert
from controlplane.scheduler.aggregates_servicer import AggregatesServicer
from controlplane.scheduler.events import subscribe_heartbeats, subscribe_inventory
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.metrics import watch_hosts
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.providers_servicer import ResourceProvidersServicer
from controlplane.scheduler.servicer import SchedulerServicer
from controlplane.scheduler.store import ProviderStore, utcnow

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name
AGGREGATES_SERVICE_NAME = aggregates_pb2.DESCRIPTOR.services_by_name["AggregatesService"].full_name
BINARY = "loom-scheduler"
# Full re-reads pick up other replicas' claims and releases; own writes are seen at once.
REFRESH_INTERVAL_S = 5.0
OWN_HEARTBEAT_INTERVAL_S = 10.0
# Enough claims in flight to keep PostgreSQL busy while this process ranks the next ones.
CLAIM_CONNECTIONS = 4


def heartbeat_flush_interval(service_down_time: int) -> float:
    """Often enough that the stored heartbeat lags far less than service_down_time."""
    return min(10.0, service_down_time / 4)


async def _every(interval: float, job: Callable[[], Awaitable[object]], name: str) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await job()
        except Exception:
            log.exception("periodic job failed", extra={"job": name})


async def _publish_own_heartbeat(nc: NATS, host: str, endpoint: str) -> None:
    beat = agent_bus_pb2.Heartbeat(host=host, binary=BINARY, compute_endpoint=endpoint)
    beat.sent_at.CopyFrom(convert.timestamp(utcnow()))
    await nc.publish(bus.heartbeat_subject(host), beat.SerializeToString())


async def serve(cfg: LoomConfig, stop: asyncio.Event) -> None:
    """Serves until `stop` is set, then stops listening, writes pending heartbeats and closes.

    Raises at start (before serving) on an unknown filter or weigher name, or without NATS.
    """
    sched = cfg.scheduler
    pipeline = build_pipeline(sched)
    if not cfg.nats.url:
        raise RuntimeError("the scheduler needs nats.url (LOOM_NATS__URL)")
    engine = engine_for(cfg.database, cfg.database_url)
    # Claims keep a few connections open, so each is one round trip with no pool checkout.
    store = ProviderStore(engine, claim_connections=CLAIM_CONNECTIONS)
    cache = HostCache(store)
    placement = PlacementService(store, cache, pipeline, sched)
    tasks: list[asyncio.Task[None]] = []
    nc: NATS | None = None
    server = None
    stop_watching = watch_hosts(cache, placement.down_after)
    try:
        if not await wait_until_reachable(engine, stop, BINARY):
            return
        await cache.refresh_all()
        nc = await bus.connect(cfg.nats.url, cfg.nats, BINARY)
        await bus.ensure_streams(nc.jetstream(), cfg.nats)
        await subscribe_heartbeats(nc, cache)
        await subscribe_inventory(nc, placement, sched)
        server = await start_grpc_server(
            sched.listen,
            [
                Registration(
                    SchedulerServicer(placement, sched),
                    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                    SERVICE_NAME,
                ),
                Registration(
                    AggregatesServicer(placement),
                    aggregates_pb2_grpc.add_AggregatesServiceServicer_to_server,
                    AGGREGATES_SERVICE_NAME,
                ),
                Registration.of(
                    ResourceProvidersServicer(store.engine),
                    providers_pb2,
                    providers_pb2_grpc,
                    "ResourceProvidersService",
                ),
            ],
            cfg.tls,
            [DatabaseOutage()],
        )
        me = socket.gethostname()
        endpoint = f"{sched.listen.rsplit(':', 1)[0]}:{server.port}"
        client = nc
        tasks = [
            asyncio.create_task(_every(REFRESH_INTERVAL_S, cache.refresh_all, "refresh")),
            asyncio.create_task(
                _every(
                    heartbeat_flush_interval(sched.service_down_time),
                    cache.flush_heartbeats,
                    "heartbeat-flush",
                )
            ),
            asyncio.create_task(
                _every(
                    OWN_HEARTBEAT_INTERVAL_S,
                    lambda: _publish_own_heartbeat(client, me, endpoint),
                    "heartbeat",
                )
            ),
        ]
        await _publish_own_heartbeat(nc, me, endpoint)
        log.info("ready", extra={"service": "scheduler", "grpc_port": server.port})
        await stop.wait()
    finally:
        stop_watching()
        if server is not None:
            await server.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await cache.flush_heartbeats()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
        await store.close()
        await engine.dispose()
        log.info("stopped", extra={"service": "scheduler"})
