"""The identity service: its gRPC registrations for whichever process hosts it, and `loom
identity`, the process that serves it alone."""

from __future__ import annotations

import asyncio

from loom.identity.v1 import identity_pb2, identity_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.db.seeding import Seeder
from controlplane.identity.seed import IDENTITY_STEPS
from controlplane.identity.servicer import IdentityServicer
from controlplane.runtime.domain import serve_domain
from controlplane.runtime.grpcserver import Registration


class IdentityDomain:
    """Projects, users, roles and their assignments (see README.md)."""

    name = "identity"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
        self._sessions = sessions
        self._seeder = Seeder(sessions, cfg.data_path, IDENTITY_STEPS)

    def registrations(self) -> list[Registration]:
        return [
            Registration.of(
                IdentityServicer(self._sessions, self._seeder),
                identity_pb2,
                identity_pb2_grpc,
                "IdentityService",
            )
        ]

    async def seed(self) -> None:
        await self._seeder.ensure()


async def serve(cfg: LoomConfig, stop: asyncio.Event, **_options: object) -> None:
    await serve_domain(cfg, stop, IdentityDomain, cfg.identity.listen)
