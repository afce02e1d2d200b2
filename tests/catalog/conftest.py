"""The catalog's gRPC servicers on a real PostgreSQL, called through real stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from loom.catalog.v1 import flavors_pb2_grpc, keypairs_pb2_grpc
from loom.conductor.v1 import server_groups_pb2_grpc
from loom.identity.v1 import identity_pb2_grpc
from loom.image.v1 import images_pb2_grpc

from tests.support.catalog import RunningCatalog, running_catalog


@dataclass
class Stubs:
    catalog: RunningCatalog
    identity: identity_pb2_grpc.IdentityServiceAsyncStub
    flavors: flavors_pb2_grpc.FlavorsServiceAsyncStub
    images: images_pb2_grpc.ImagesServiceAsyncStub
    keypairs: keypairs_pb2_grpc.KeypairsServiceAsyncStub
    server_groups: server_groups_pb2_grpc.ServerGroupsServiceAsyncStub


@pytest.fixture
async def stubs(pg_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running_catalog(pg_url, tmp_path / "data") as cat:
        channel = grpc.aio.insecure_channel(cat.target)
        try:
            yield Stubs(
                catalog=cat,
                identity=identity_pb2_grpc.IdentityServiceStub(channel),
                flavors=flavors_pb2_grpc.FlavorsServiceStub(channel),
                images=images_pb2_grpc.ImagesServiceStub(channel),
                keypairs=keypairs_pb2_grpc.KeypairsServiceStub(channel),
                server_groups=server_groups_pb2_grpc.ServerGroupsServiceStub(channel),
            )
        finally:
            await channel.close()
