"""The gateway in front of every service it calls, on the test's PostgreSQL: the conductor's
compute services (servers, server groups, consoles, fleet, migrations, diagnostics) hosting
identity, image, catalog and network on one gRPC port, as `loom conductor` does, and the
scheduler's own APIs (aggregates, resource providers) beside a real scheduler it claims
from. No NATS and no agents: a server is recorded and stays in its first state, which is
all a policy check needs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from controlplane.catalog.service import CatalogDomain
from controlplane.conductor.context import Conductor, SchedulerClient
from controlplane.conductor.outbox import Wakeup
from controlplane.conductor.service import registrations
from controlplane.config import async_database_url, load_config
from controlplane.db.engine import make_engine, session_factory
from controlplane.db.outage import DatabaseOutage
from controlplane.identity.service import IdentityDomain
from controlplane.image.service import ImageDomain
from controlplane.network.client import GrpcPortsClient, PortsClient
from controlplane.network.service import NetworkDomain
from controlplane.runtime.domain import DomainService
from controlplane.runtime.grpcserver import (
    insecure_or_secure_channel,
    start_grpc_server,
)
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.store import ProviderStore
from controlplane.seedfile import load_or_create
from gateway.app import build_app
from gateway.scheduler import Scheduler
from gateway.service import make_gateway
from tests.gateway.conftest import Cloud
from tests.gateway.scheduler_cloud import scheduler_api_registrations
from tests.support.catalog import RunningCatalog
from tests.support.scheduler import running_scheduler


class _LatePorts:
    """The conductor's port client, bound once the network service it hosts is serving."""

    inner: GrpcPortsClient | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@asynccontextmanager
async def full_cloud(pg_url: str, data_dir: Path) -> AsyncIterator[Cloud]:
    engine = create_async_engine(async_database_url(pg_url), poolclass=NullPool)
    sessions = session_factory(engine)
    sched_engine = make_engine(pg_url)
    store = ProviderStore(sched_engine)
    cfg = load_config(
        environ={}, overrides={"data_dir": str(data_dir), "network": {"l3_host": "l3-host"}}
    )
    placement = PlacementService(
        store, HostCache(store), build_pipeline(cfg.scheduler), cfg.scheduler
    )
    try:
        async with running_scheduler(pg_url, cfg.scheduler) as sched:
            to_scheduler = insecure_or_secure_channel(sched.target)
            ports = _LatePorts()
            conductor = Conductor(
                sessions, cfg, Wakeup(), SchedulerClient(to_scheduler), cast(PortsClient, ports)
            )
            domains = (IdentityDomain, ImageDomain, CatalogDomain, NetworkDomain)
            hosted: list[DomainService] = [domain(sessions, cfg) for domain in domains]
            server = await start_grpc_server(
                "127.0.0.1:0",
                [
                    *registrations(conductor, hosted),
                    *scheduler_api_registrations(placement, sched_engine),
                ],
                None,
                [DatabaseOutage()],
            )
            to_self = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
            ports.inner = GrpcPortsClient(to_self)
            gw_cfg = load_config(
                environ={},
                overrides={
                    "data_dir": str(data_dir),
                    "conductor": {"listen": f"127.0.0.1:{server.port}"},
                },
            )
            gateway = make_gateway(gw_cfg)
            if gateway.scheduler is not None:
                await gateway.scheduler.close()
            gateway.scheduler = Scheduler(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
            transport = httpx.ASGITransport(app=build_app(gateway))
            try:
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://loom.test"
                ) as client:
                    yield Cloud(
                        client=client,
                        seed=load_or_create(gw_cfg.data_path),
                        catalog=RunningCatalog(cfg=gw_cfg, sessions=sessions, port=server.port),
                    )
            finally:
                await gateway.conductor.close()
                await gateway.scheduler.close()
                await to_self.close()
                await to_scheduler.close()
                await server.stop(0)
    finally:
        await store.close()
        await sched_engine.dispose()
        await engine.dispose()
