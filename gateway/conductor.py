"""The gateway's only way out: typed gRPC stubs to the conductor, with deadlines and
gRPC failures turned into API errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from loom.conductor.v1 import conductor_pb2_grpc as pb_grpc

from gateway.errors import from_grpc

Resp = TypeVar("Resp")

# Every call has a deadline: a stuck conductor becomes a 503, not a hung client.
DEFAULT_DEADLINE_S = 30.0


class Conductor:
    """One channel, one stub per conductor service."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.identity = pb_grpc.IdentityServiceStub(channel)
        self.flavors = pb_grpc.FlavorsServiceStub(channel)
        self.images = pb_grpc.ImagesServiceStub(channel)
        self.keypairs = pb_grpc.KeypairsServiceStub(channel)
        self.servers = pb_grpc.ServersServiceStub(channel)
        self.quotas = pb_grpc.QuotasServiceStub(channel)
        self.fleet = pb_grpc.FleetServiceStub(channel)
        self.server_groups = pb_grpc.ServerGroupsServiceStub(channel)
        self.consoles = pb_grpc.ConsolesServiceStub(channel)

    async def close(self) -> None:
        await self.channel.close()


async def call(method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
    """Calls one RPC; a gRPC failure becomes the matching ApiError."""
    try:
        return await method(request, timeout=DEFAULT_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc.code(), exc.details() or "") from exc
