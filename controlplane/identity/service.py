"""The identity service's gRPC registrations, for whichever process hosts it."""

from __future__ import annotations

from loom.identity.v1 import identity_pb2, identity_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.db.seeding import Seeder
from controlplane.identity.seed import IDENTITY_STEPS as STEPS
from controlplane.identity.servicer import IdentityServicer
from controlplane.runtime.grpcserver import Registration


def registrations(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[Registration]:
    seeder = Seeder(sessions, cfg.data_path, STEPS)
    return [
        Registration(
            IdentityServicer(sessions, seeder),
            identity_pb2_grpc.add_IdentityServiceServicer_to_server,
            identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name,
        )
    ]


async def seed(sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
    """Seeds this domain now (its servicers would on their first RPC): the process hosting it
    calls this at start, so other domains that read its rows find them from the first call."""
    await Seeder(sessions, cfg.data_path, STEPS).ensure()
