"""While the database cannot be reached, services answer UNAVAILABLE (the gateway: 503 with
Retry-After), never an internal error."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from loom.identity.v1 import identity_pb2, identity_pb2_grpc
from sqlalchemy.ext.asyncio import create_async_engine

from controlplane.config import async_database_url, load_config
from controlplane.db.engine import session_factory
from controlplane.db.outage import MESSAGE, DatabaseOutage
from controlplane.identity.service import IdentityDomain
from controlplane.runtime.grpcserver import start_grpc_server
from controlplane.runtime.natsserver import free_port
from gateway.errors import from_grpc


async def test_a_service_whose_database_is_down_answers_unavailable(tmp_path: Path) -> None:
    # A PostgreSQL URL where nothing listens: every connection attempt is refused.
    url = async_database_url(f"postgresql://postgres@127.0.0.1:{free_port()}/loom")
    engine = create_async_engine(url)
    cfg = load_config(environ={}, overrides={"data_dir": str(tmp_path)})
    domain = IdentityDomain(session_factory(engine), cfg)
    running = await start_grpc_server(
        "127.0.0.1:0", domain.registrations(), None, [DatabaseOutage()]
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.ListRoles(identity_pb2.ListRolesRequest(), timeout=30)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == MESSAGE
    finally:
        await running.stop(0)
        await engine.dispose()


def test_the_gateway_turns_unavailable_into_503_with_retry_after() -> None:
    error = from_grpc(grpc.StatusCode.UNAVAILABLE, MESSAGE)
    assert (error.status, error.message) == (503, MESSAGE)
    assert int(error.headers["Retry-After"]) > 0
