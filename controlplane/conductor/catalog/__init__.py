"""The conductor's catalog: identity (projects, users, roles), flavors, images, keypairs,
server groups.

`registrations()` is how the conductor's server picks up the catalog's gRPC services.
Every servicer seeds the catalog (roles, admin and demo, default flavors) the first
time it is called, from the seed file in the data directory; `seed_catalog` does the
same on demand.
"""

from __future__ import annotations

from loom.conductor.v1 import conductor_pb2 as pb
from loom.conductor.v1 import conductor_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor.catalog.flavors import FlavorsServicer
from controlplane.conductor.catalog.identity import IdentityServicer
from controlplane.conductor.catalog.images import ImagesServicer
from controlplane.conductor.catalog.keypairs import KeypairsServicer
from controlplane.conductor.catalog.seed import Seeder, seed_catalog
from controlplane.conductor.catalog.server_groups import ServerGroupsServicer
from controlplane.config import LoomConfig
from controlplane.runtime.grpcserver import Registration

__all__ = ["Seeder", "registrations", "seed_catalog"]


def _name(service: str) -> str:
    return pb.DESCRIPTOR.services_by_name[service].full_name


def registrations(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[Registration]:
    """The catalog's servicers, ready to add to the conductor's gRPC server."""
    seeder = Seeder(sessions, cfg.data_path)
    return [
        Registration(
            IdentityServicer(sessions, seeder),
            pb_grpc.add_IdentityServiceServicer_to_server,
            _name("IdentityService"),
        ),
        Registration(
            FlavorsServicer(sessions, seeder),
            pb_grpc.add_FlavorsServiceServicer_to_server,
            _name("FlavorsService"),
        ),
        Registration(
            ImagesServicer(sessions, seeder),
            pb_grpc.add_ImagesServiceServicer_to_server,
            _name("ImagesService"),
        ),
        Registration(
            KeypairsServicer(sessions, seeder, cfg.conductor.default_quota_key_pairs),
            pb_grpc.add_KeypairsServiceServicer_to_server,
            _name("KeypairsService"),
        ),
        Registration(
            ServerGroupsServicer(sessions, cfg.conductor.default_quota_server_groups),
            pb_grpc.add_ServerGroupsServiceServicer_to_server,
            _name("ServerGroupsService"),
        ),
    ]
