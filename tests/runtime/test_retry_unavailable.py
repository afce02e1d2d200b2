"""A caller whose calls are idempotent (the gateway) does not see a replica die under it:
a call cut off before the answer is tried again on another replica of the target. Two
real gRPC servers behind one round-robin target; one is stopped while calls to it run."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from controlplane.runtime.grpcserver import insecure_or_secure_channel
from controlplane.runtime.natsserver import free_port


class Replica:
    """Answers its name; replica "a" never answers a b"slow" call (it dies first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.entered = asyncio.Event()
        self.server = grpc.aio.server()
        self.port = self.server.add_insecure_port(f"127.0.0.1:{free_port()}")
        handler = grpc.unary_unary_rpc_method_handler(self._call)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("loom.test.Echo", {"Call": handler}),)
        )

    async def _call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if request == b"slow" and self.name == "a":
            self.entered.set()
            await asyncio.sleep(30)
        return self.name.encode()


async def _calls_while_a_replica_dies(retry: bool) -> list[bytes]:
    a, b = Replica("a"), Replica("b")
    await a.server.start()
    await b.server.start()
    target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
    channel = insecure_or_secure_channel(target, retry_unavailable=retry)
    try:
        call = channel.unary_unary("/loom.test.Echo/Call")
        # Both replicas in the round: answers from each.
        seen: set[bytes] = set()
        for _ in range(50):
            seen.add(await call(b"ping", timeout=5))
            if seen == {b"a", b"b"}:
                break
        assert seen == {b"a", b"b"}
        calls = [asyncio.ensure_future(call(b"slow", timeout=20)) for _ in range(4)]
        await asyncio.wait_for(a.entered.wait(), 5)
        await a.server.stop(0)  # killed with calls in flight
        return list(await asyncio.gather(*calls))
    finally:
        await channel.close()
        await a.server.stop(0)
        await b.server.stop(0)


async def test_a_call_cut_off_by_a_dying_replica_is_answered_by_another() -> None:
    assert await _calls_while_a_replica_dies(retry=True) == [b"b"] * 4


async def test_without_the_retry_the_cut_off_call_fails_unavailable() -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await _calls_while_a_replica_dies(retry=False)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
