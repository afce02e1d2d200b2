"""The image service's gRPC registrations, for whichever process hosts it."""

from __future__ import annotations

from loom.image.v1 import images_pb2, images_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.image.servicer import ImagesServicer
from controlplane.runtime.grpcserver import Registration


def registrations(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[Registration]:
    del cfg  # the image service has no settings of its own yet
    return [
        Registration(
            ImagesServicer(sessions),
            images_pb2_grpc.add_ImagesServiceServicer_to_server,
            images_pb2.DESCRIPTOR.services_by_name["ImagesService"].full_name,
        )
    ]
