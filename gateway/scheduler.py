"""The gateway's stubs to the scheduler's own APIs (host aggregates, placement reads), on
a channel of their own: the scheduler is reached at `gateway.scheduler_target`, or
`scheduler.listen` when that is empty."""

from __future__ import annotations

import grpc
from loom.scheduler.v1 import aggregates_pb2_grpc, providers_pb2_grpc

from controlplane.config import LoomConfig
from controlplane.runtime.grpcserver import insecure_or_secure_channel


class Scheduler:
    """One channel, one stub per scheduler service the REST API translates to."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.aggregates = aggregates_pb2_grpc.AggregatesServiceStub(channel)
        self.providers = providers_pb2_grpc.ResourceProvidersServiceStub(channel)

    @classmethod
    def for_config(cls, cfg: LoomConfig) -> Scheduler:
        target = cfg.gateway.scheduler_target or cfg.scheduler.listen
        return cls(insecure_or_secure_channel(target, cfg.tls))

    async def close(self) -> None:
        await self.channel.close()
