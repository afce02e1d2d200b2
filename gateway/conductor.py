"""The gateway's only way out: typed gRPC stubs to the services that own each resource (the
compute service, identity, image, catalog and network), with deadlines and gRPC failures turned into
API errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import grpc
from loom.catalog.v1 import flavors_pb2_grpc, keypairs_pb2_grpc, quotas_pb2_grpc
from loom.conductor.v1 import (
    consoles_pb2_grpc,
    diagnostics_pb2_grpc,
    fleet_pb2_grpc,
    migrations_pb2_grpc,
    server_groups_pb2_grpc,
    servers_pb2_grpc,
)
from loom.identity.v1 import identity_pb2_grpc
from loom.image.v1 import images_pb2_grpc
from loom.network.v1 import network_pb2_grpc

from gateway.errors import from_grpc

Resp = TypeVar("Resp")

# Every call has a deadline: a stuck conductor becomes a 503, not a hung client.
DEFAULT_DEADLINE_S = 30.0


Domain = Literal["compute", "identity", "image", "catalog", "network"]


class Conductor:
    """One stub per service, each on the channel to the domain that owns it. Domains that
    share a target (one process hosting several) share one channel."""

    def __init__(self, channels: Mapping[Domain, grpc.aio.Channel]) -> None:
        self._channels = channels
        compute, identity = channels["compute"], channels["identity"]
        image, catalog = channels["image"], channels["catalog"]
        self.identity = identity_pb2_grpc.IdentityServiceStub(identity)
        self.images = images_pb2_grpc.ImagesServiceStub(image)
        self.flavors = flavors_pb2_grpc.FlavorsServiceStub(catalog)
        self.keypairs = keypairs_pb2_grpc.KeypairsServiceStub(catalog)
        self.quotas = quotas_pb2_grpc.QuotasServiceStub(catalog)
        self.servers = servers_pb2_grpc.ServersServiceStub(compute)
        self.fleet = fleet_pb2_grpc.FleetServiceStub(compute)
        self.server_groups = server_groups_pb2_grpc.ServerGroupsServiceStub(compute)
        self.consoles = consoles_pb2_grpc.ConsolesServiceStub(compute)
        self.diagnostics = diagnostics_pb2_grpc.DiagnosticsServiceStub(compute)
        self.migrations = migrations_pb2_grpc.MigrationsServiceStub(compute)
        self.network = network_pb2_grpc.NetworkServiceStub(channels["network"])

    @classmethod
    def connect(
        cls, targets: Mapping[Domain, str], open_channel: Callable[[str], grpc.aio.Channel]
    ) -> Conductor:
        """Opens one channel per distinct target."""
        by_target: dict[str, grpc.aio.Channel] = {}
        for target in targets.values():
            if target not in by_target:
                by_target[target] = open_channel(target)
        return cls({domain: by_target[target] for domain, target in targets.items()})

    async def close(self) -> None:
        for channel in {id(c): c for c in self._channels.values()}.values():
            await channel.close()


async def call(method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
    """Calls one RPC; a gRPC failure becomes the matching ApiError."""
    try:
        return await method(request, timeout=DEFAULT_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc.code(), exc.details() or "") from exc
