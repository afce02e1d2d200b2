"""A real gRPC server with the identity, image and catalog services and server groups, on a
real database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loom.conductor.v1 import server_groups_pb2, server_groups_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from controlplane.catalog.service import CatalogDomain
from controlplane.conductor.server_groups import ServerGroupsServicer
from controlplane.config import LoomConfig, async_database_url, load_config
from controlplane.db.engine import session_factory
from controlplane.db.outage import DatabaseOutage
from controlplane.identity.service import IdentityDomain
from controlplane.image.service import ImageDomain
from controlplane.network.service import NetworkDomain
from controlplane.runtime.grpcserver import Registration, start_grpc_server


@dataclass
class RunningCatalog:
    cfg: LoomConfig
    sessions: async_sessionmaker[AsyncSession]
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def running_catalog(
    db_url: str, data_dir: Path, overrides: dict[str, Any] | None = None
) -> AsyncIterator[RunningCatalog]:
    """The services on `db_url`; `overrides` are configuration the services read (the
    image service's limits, ...)."""
    # NullPool: every connection closes when its session ends, so none outlives the test
    # (a pooled one closed only at dispose can be collected before, which warns).
    engine = create_async_engine(async_database_url(db_url), poolclass=NullPool)
    sessions = session_factory(engine)
    cfg = load_config(
        environ={},
        overrides={
            "data_dir": str(data_dir),
            "network": {"l3_host": "l3-host"},
            **(overrides or {}),
        },
    )
    domains = (IdentityDomain, ImageDomain, CatalogDomain, NetworkDomain)
    registrations = [
        *(r for domain in domains for r in domain(sessions, cfg).registrations()),
        Registration.of(
            ServerGroupsServicer(sessions, cfg.conductor.default_quota_server_groups),
            server_groups_pb2,
            server_groups_pb2_grpc,
            "ServerGroupsService",
        ),
    ]
    # As each domain process serves: database errors in the API's terms.
    server = await start_grpc_server("127.0.0.1:0", registrations, None, [DatabaseOutage()])
    cfg = load_config(
        environ={},
        overrides={
            "data_dir": str(data_dir),
            "conductor": {"listen": f"127.0.0.1:{server.port}"},
        },
    )
    try:
        yield RunningCatalog(cfg=cfg, sessions=sessions, port=server.port)
    finally:
        await server.stop(0)
        await engine.dispose()
