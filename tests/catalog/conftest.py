"""The catalog's gRPC servicers on a real PostgreSQL, called through real stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from loom.conductor.v1 import conductor_pb2_grpc as pb_grpc

from tests.support.catalog import RunningCatalog, running_catalog


@dataclass
class Stubs:
    catalog: RunningCatalog
    identity: pb_grpc.IdentityServiceAsyncStub
    flavors: pb_grpc.FlavorsServiceAsyncStub
    images: pb_grpc.ImagesServiceAsyncStub
    keypairs: pb_grpc.KeypairsServiceAsyncStub
    server_groups: pb_grpc.ServerGroupsServiceAsyncStub


@pytest.fixture
async def stubs(pg_url: str, tmp_path: Path) -> AsyncIterator[Stubs]:
    async with running_catalog(pg_url, tmp_path / "data") as cat:
        channel = grpc.aio.insecure_channel(cat.target)
        try:
            yield Stubs(
                catalog=cat,
                identity=pb_grpc.IdentityServiceStub(channel),
                flavors=pb_grpc.FlavorsServiceStub(channel),
                images=pb_grpc.ImagesServiceStub(channel),
                keypairs=pb_grpc.KeypairsServiceStub(channel),
                server_groups=pb_grpc.ServerGroupsServiceStub(channel),
            )
        finally:
            await channel.close()
