"""The image service: its gRPC registrations for whichever process hosts it, and `loom
image`, the process that serves it alone."""

from __future__ import annotations

import asyncio

from loom.image.v1 import images_pb2, images_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.image.servicer import ImagesServicer
from controlplane.runtime.domain import serve_domain
from controlplane.runtime.grpcserver import Registration


class ImageDomain:
    """Image records and their properties (see README.md)."""

    name = "image"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
        self._sessions = sessions
        self._cfg = cfg.image

    def registrations(self) -> list[Registration]:
        return [
            Registration.of(
                ImagesServicer(self._sessions, self._cfg),
                images_pb2,
                images_pb2_grpc,
                "ImagesService",
            )
        ]

    async def seed(self) -> None:
        """Nothing to seed: images are registered through the API (`loom up` registers its
        default image that way)."""


async def serve(cfg: LoomConfig, stop: asyncio.Event, **_options: object) -> None:
    await serve_domain(cfg, stop, ImageDomain, cfg.image.listen)
