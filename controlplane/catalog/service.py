"""The catalog service (flavors, keypairs, quotas): its gRPC registrations for whichever
process hosts it, and `loom catalog`, the process that serves it alone."""

from __future__ import annotations

import asyncio

from loom.catalog.v1 import (
    flavors_pb2,
    flavors_pb2_grpc,
    keypairs_pb2,
    keypairs_pb2_grpc,
    quotas_pb2,
    quotas_pb2_grpc,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.catalog.flavors import FlavorsServicer
from controlplane.catalog.keypairs import KeypairsServicer
from controlplane.catalog.quotas import QuotasServicer
from controlplane.catalog.seed import FLAVOR_STEPS
from controlplane.config import LoomConfig
from controlplane.db.seeding import Seeder
from controlplane.runtime.domain import serve_domain
from controlplane.runtime.grpcserver import Registration


class CatalogDomain:
    """Flavors, keypairs and quota limits (see README.md)."""

    name = "catalog"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
        self._sessions = sessions
        self._cfg = cfg
        self._seeder = Seeder(sessions, cfg.data_path, FLAVOR_STEPS)

    def registrations(self) -> list[Registration]:
        sessions, conductor_cfg = self._sessions, self._cfg.conductor
        return [
            Registration.of(
                FlavorsServicer(sessions, self._seeder),
                flavors_pb2,
                flavors_pb2_grpc,
                "FlavorsService",
            ),
            Registration.of(
                KeypairsServicer(sessions, conductor_cfg.default_quota_key_pairs),
                keypairs_pb2,
                keypairs_pb2_grpc,
                "KeypairsService",
            ),
            Registration.of(
                QuotasServicer(sessions, conductor_cfg),
                quotas_pb2,
                quotas_pb2_grpc,
                "QuotasService",
            ),
        ]

    async def seed(self) -> None:
        await self._seeder.ensure()


async def serve(cfg: LoomConfig, stop: asyncio.Event, **_options: object) -> None:
    await serve_domain(cfg, stop, CatalogDomain, cfg.catalog.listen)
