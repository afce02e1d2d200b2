"""Every gRPC call Loom makes has a deadline, even when its caller gave none."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controlplane.runtime import grpcserver
from controlplane.runtime.grpcserver import DefaultDeadline, Registration, start_grpc_server


def _hanging(server: grpc.aio.Server) -> None:
    async def hang(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.Event().wait()
        return b""

    handler = grpc.unary_unary_rpc_method_handler(hang)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("loomtest.Hang", {"Call": handler}),)
    )


async def test_a_call_without_a_timeout_ends_at_the_default_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = await start_grpc_server(
        "127.0.0.1:0", [Registration(None, lambda _s, server: _hanging(server), "loomtest.Hang")]
    )
    monkeypatch.setattr(grpcserver, "_DEFAULT_DEADLINE", DefaultDeadline(0.3))
    try:
        async with grpcserver.insecure_or_secure_channel(f"127.0.0.1:{running.port}") as ch:
            call = ch.unary_unary("/loomtest.Hang/Call")
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                # No timeout given: the channel's default applies.
                await asyncio.wait_for(call(b""), timeout=30)
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await running.stop(0)
