"""The gateway in front of a catalog and of a real scheduler's own APIs (AggregatesService
and ResourceProvidersService on the test's PostgreSQL), knowing hosts h1 and h2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
from loom.scheduler.v1 import aggregates_pb2, aggregates_pb2_grpc, providers_pb2, providers_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig
from controlplane.db.engine import make_engine
from controlplane.runtime.grpcserver import Registration, start_grpc_server
from controlplane.scheduler.aggregates_servicer import AggregatesServicer
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.providers_servicer import ResourceProvidersServicer
from controlplane.scheduler.store import ProviderStore
from controlplane.seedfile import load_or_create
from gateway.app import build_app
from gateway.scheduler import Scheduler
from gateway.service import make_gateway
from tests.gateway.conftest import Cloud
from tests.scheduler.dbcheck import add_host
from tests.support.catalog import running_catalog


@dataclass
class ScheduledCloud:
    cloud: Cloud
    store: ProviderStore
    hosts: dict[str, HostState]


def scheduler_api_registrations(
    placement: PlacementService, engine: AsyncEngine
) -> list[Registration]:
    """The scheduler's own APIs the gateway calls: aggregates and resource providers."""
    return [
        Registration.of(
            AggregatesServicer(placement), aggregates_pb2, aggregates_pb2_grpc, "AggregatesService"
        ),
        Registration.of(
            ResourceProvidersServicer(engine),
            providers_pb2,
            providers_pb2_grpc,
            "ResourceProvidersService",
        ),
    ]


@asynccontextmanager
async def scheduled_cloud(pg_url: str, tmp_path: Path) -> AsyncIterator[ScheduledCloud]:
    engine = make_engine(pg_url)
    cfg = SchedulerConfig()
    store = ProviderStore(engine)
    placement = PlacementService(store, HostCache(store), build_pipeline(cfg), cfg)
    hosts = {name: await add_host(store, name) for name in ("h1", "h2")}
    server = await start_grpc_server("127.0.0.1:0", scheduler_api_registrations(placement, engine))
    try:
        async with running_catalog(pg_url, tmp_path / "data") as cat:
            gateway = make_gateway(cat.cfg)
            if gateway.scheduler is not None:
                await gateway.scheduler.close()
            gateway.scheduler = Scheduler(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
            transport = httpx.ASGITransport(app=build_app(gateway))
            async with httpx.AsyncClient(transport=transport, base_url="http://loom.test") as c:
                cloud = Cloud(client=c, seed=load_or_create(cat.cfg.data_path), catalog=cat)
                yield ScheduledCloud(cloud, store, hosts)
            await gateway.conductor.close()
            await gateway.scheduler.close()
    finally:
        await server.stop(0)
        await engine.dispose()
