"""The catalog service's gRPC registrations (flavors, keypairs, quotas), for whichever
process hosts it."""

from __future__ import annotations

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
from controlplane.catalog.seed import FLAVOR_STEPS as STEPS
from controlplane.config import LoomConfig
from controlplane.db.seeding import Seeder
from controlplane.runtime.grpcserver import Registration


def registrations(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[Registration]:
    seeder = Seeder(sessions, cfg.data_path, STEPS)
    return [
        Registration(
            FlavorsServicer(sessions, seeder),
            flavors_pb2_grpc.add_FlavorsServiceServicer_to_server,
            flavors_pb2.DESCRIPTOR.services_by_name["FlavorsService"].full_name,
        ),
        Registration(
            KeypairsServicer(sessions, cfg.conductor.default_quota_key_pairs),
            keypairs_pb2_grpc.add_KeypairsServiceServicer_to_server,
            keypairs_pb2.DESCRIPTOR.services_by_name["KeypairsService"].full_name,
        ),
        Registration(
            QuotasServicer(sessions, cfg.conductor),
            quotas_pb2_grpc.add_QuotasServiceServicer_to_server,
            quotas_pb2.DESCRIPTOR.services_by_name["QuotasService"].full_name,
        ),
    ]


async def seed(sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
    """Seeds this domain now (its servicers would on their first RPC): the process hosting it
    calls this at start, so other domains that read its rows find them from the first call."""
    await Seeder(sessions, cfg.data_path, STEPS).ensure()
