"""A domain service's process boundary: what a domain offers to whichever process hosts it,
and the process that hosts one domain alone (`loom identity`, `loom image`, `loom catalog`).

A domain is its servicers (`registrations`) and the rows it seeds before serving (`seed`).
The conductor hosts the domains named in `conductor.hosted_domains` on its own gRPC port;
any other domain runs as a process of its own with `serve_domain`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.db.engine import engine_for, session_factory
from controlplane.db.outage import DatabaseOutage, wait_until_reachable
from controlplane.runtime.grpcserver import Registration, start_grpc_server

log = logging.getLogger(__name__)


class DomainService(Protocol):
    """One domain, bound to a database: its gRPC servicers and its seed."""

    @property
    def name(self) -> str: ...

    def registrations(self) -> list[Registration]: ...

    async def seed(self) -> None:
        """Creates the rows the domain's seed file names and the database lacks (idempotent;
        once per process: the servicers share the same seeder)."""


DomainFactory = Callable[[async_sessionmaker[AsyncSession], LoomConfig], DomainService]


async def serve_domain(
    cfg: LoomConfig, stop: asyncio.Event, factory: DomainFactory, listen: str
) -> None:
    """Seeds the domain, serves its gRPC services (with health and reflection) on `listen`
    until stop is set, then stops taking calls and closes the database pool."""
    engine = engine_for(cfg.database, cfg.database_url)
    try:
        domain = factory(session_factory(engine), cfg)
        if not await wait_until_reachable(engine, stop, domain.name):
            return
        # Seeded before serving: the compute service reads the catalog's default flavors
        # and quota limits from the first boot on, without calling this process.
        await domain.seed()
        running = await start_grpc_server(
            listen, domain.registrations(), cfg.tls, [DatabaseOutage()]
        )
        log.info("ready", extra={"service": domain.name, "grpc_port": running.port})
        try:
            await stop.wait()
        finally:
            await running.stop()
        log.info("stopped", extra={"service": domain.name})
    finally:
        await engine.dispose()
