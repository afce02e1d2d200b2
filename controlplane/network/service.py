"""The network service: its gRPC registration for whichever process hosts it (the
conductor by default), and `loom network`, the process that serves it alone."""

from __future__ import annotations

import asyncio

from loom.network.v1 import network_pb2, network_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.network.servicer import NetworkServicer
from controlplane.runtime.domain import serve_domain
from controlplane.runtime.grpcserver import Registration


class NetworkDomain:
    """Networks, subnets, ports and their addresses, security groups (see README.md)."""

    name = "network"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig) -> None:
        self._sessions = sessions
        self._cfg = cfg

    def registrations(self) -> list[Registration]:
        return [
            Registration.of(
                NetworkServicer(
                    self._sessions,
                    auto_pool=self._cfg.network.auto_allocate_pool,
                    auto_prefixlen=self._cfg.network.auto_allocate_prefixlen,
                    l3_host=self._cfg.network.l3_host,
                ),
                network_pb2,
                network_pb2_grpc,
                "NetworkService",
            )
        ]

    async def seed(self) -> None:
        """Nothing to seed: each project's default security group is made on first use."""


async def serve(cfg: LoomConfig, stop: asyncio.Event, **_options: object) -> None:
    await serve_domain(cfg, stop, NetworkDomain, cfg.network.listen)
