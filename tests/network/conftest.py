"""The network service on a real gRPC server and PostgreSQL, called through real stubs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from loom.network.v1 import network_pb2 as pb
from loom.network.v1 import network_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from controlplane.config import async_database_url, load_config
from controlplane.db.engine import engine_for, session_factory
from controlplane.db.outage import DatabaseOutage
from controlplane.network.service import NetworkDomain
from controlplane.runtime.grpcserver import start_grpc_server

# The host the network service names as serving every router.
L3_HOST = "l3-host"


@dataclass
class Net:
    stub: network_pb2_grpc.NetworkServiceAsyncStub
    channel: grpc.aio.Channel
    sessions: async_sessionmaker[AsyncSession]

    @staticmethod
    def scope(project: str = "p1", admin: bool = False) -> pb.Scope:
        return pb.Scope(project_id=project, is_admin=admin)

    async def network_with_subnet(self, cidr: str, project: str = "p1") -> tuple[str, str]:
        net = await self.stub.CreateNetwork(
            pb.CreateNetworkRequest(scope=self.scope(project), network=pb.Network(name="n"))
        )
        sub = await self.stub.CreateSubnet(
            pb.CreateSubnetRequest(
                scope=self.scope(project),
                subnet=pb.Subnet(network_id=net.network.id, ip_version=4, cidr=cidr),
            )
        )
        return net.network.id, sub.subnet.id


@pytest.fixture(params=["postgresql", "sqlite"])
async def net(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Net]:
    """On PostgreSQL (a small pool, as a service has: concurrent calls queue for a
    connection and still run their transactions side by side) and on SQLite (one writer at
    a time, the embedded default)."""
    cfg = load_config(
        environ={},
        overrides={"data_dir": str(tmp_path / "data"), "network": {"l3_host": L3_HOST}},
    )
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        engine = create_async_engine(async_database_url(url), pool_size=8, max_overflow=0)
    else:
        engine = engine_for(cfg.database, async_database_url(request.getfixturevalue("sqlite_url")))
    sessions = session_factory(engine)
    server = await start_grpc_server(
        "127.0.0.1:0", NetworkDomain(sessions, cfg).registrations(), None, [DatabaseOutage()]
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield Net(network_pb2_grpc.NetworkServiceStub(channel), channel, sessions)
    finally:
        await channel.close()
        await server.stop(0)
        await engine.dispose()
