"""The gateway's only way out: typed gRPC stubs to the conductor, with deadlines and
gRPC failures turned into API errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from loom.catalog.v1 import flavors_pb2_grpc, keypairs_pb2_grpc, quotas_pb2_grpc
from loom.conductor.v1 import (
    consoles_pb2_grpc,
    fleet_pb2_grpc,
    server_groups_pb2_grpc,
    servers_pb2_grpc,
)
from loom.identity.v1 import identity_pb2_grpc
from loom.image.v1 import images_pb2_grpc

from gateway.errors import from_grpc

Resp = TypeVar("Resp")

# Every call has a deadline: a stuck conductor becomes a 503, not a hung client.
DEFAULT_DEADLINE_S = 30.0


class Conductor:
    """One channel, one stub per conductor service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.identity = identity_pb2_grpc.IdentityServiceStub(channel)
        self.flavors = flavors_pb2_grpc.FlavorsServiceStub(channel)
        self.images = images_pb2_grpc.ImagesServiceStub(channel)
        self.keypairs = keypairs_pb2_grpc.KeypairsServiceStub(channel)
        self.servers = servers_pb2_grpc.ServersServiceStub(channel)
        self.quotas = quotas_pb2_grpc.QuotasServiceStub(channel)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(channel)
        self.server_groups = server_groups_pb2_grpc.ServerGroupsServiceStub(channel)
        self.consoles = consoles_pb2_grpc.ConsolesServiceStub(channel)

    async def close(self) -> None:
        await self.channel.close()


async def call(method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
    """Calls one RPC; a gRPC failure becomes the matching ApiError."""
    try:
        return await method(request, timeout=DEFAULT_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc.code(), exc.details() or "") from exc
