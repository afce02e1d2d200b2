"""A Loom gRPC client finds a restarted server again within a short, fixed backoff,
however long the server was away (gRPC's own backoff grows to two minutes)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from controlplane.runtime import grpcserver
from controlplane.runtime.grpcserver import Registration, start_grpc_server

pytestmark = pytest.mark.slow


def _echo(server: grpc.aio.Server) -> None:
    async def echo(request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("loomtest.Echo", {"Call": handler}),)
    )


def _serve(port: int) -> asyncio.Future[grpcserver.RunningServer]:
    return asyncio.ensure_future(
        start_grpc_server(
            f"127.0.0.1:{port}",
            [Registration(None, lambda _s, server: _echo(server), "loomtest.Echo")],
        )
    )


async def test_a_client_reaches_a_server_back_after_a_long_outage_within_the_backoff_cap() -> None:
    running = await _serve(0)
    port = running.port
    async with grpcserver.insecure_or_secure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary("/loomtest.Echo/Call")
        assert await call(b"x", timeout=5) == b"x"
        await running.stop(0)
        # Away long enough for gRPC's default backoff (1 s growing 1.6 times a try) to
        # reach about ten seconds between tries; the client keeps calling meanwhile.
        away_until = time.monotonic() + 20
        while time.monotonic() < away_until:
            with pytest.raises(grpc.aio.AioRpcError):
                await call(b"x", timeout=0.5)
            await asyncio.sleep(0.2)
        running = await _serve(port)
        back = time.monotonic()
        try:
            while True:
                try:
                    assert await call(b"x", timeout=0.5) == b"x"
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            found_after = time.monotonic() - back
            # The cap plus a try's own time: never the grown default backoff.
            assert found_after <= grpcserver.MAX_RECONNECT_BACKOFF_S + 1.0, found_after
        finally:
            await running.stop(0)
