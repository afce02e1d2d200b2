"""Turning domain errors into gRPC status codes: one wrapper for every servicer method."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from controlplane.conductor.errors import Conflict, InvalidArgument, NotFound, QuotaExceeded
from controlplane.conductor.states import InvalidState

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidState, grpc.StatusCode.FAILED_PRECONDITION),
)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def grpc_errors(fn: Method[Req, Resp]) -> Method[Req, Resp]:
    """Aborts the call with the code matching a domain error; other errors stay INTERNAL."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except tuple(cls for cls, _ in _CODES) as exc:
            code = next(code for cls, code in _CODES if isinstance(exc, cls))
            await context.abort(code, str(exc))
            raise  # abort raises; this keeps mypy sure the function never falls through
        except grpc.aio.AioRpcError as exc:
            # A peer (the scheduler) failed: the caller may retry, so say UNAVAILABLE
            # rather than leak the peer's own status as ours.
            log.warning("peer call failed: %s %s", exc.code(), exc.details())
            await context.abort(grpc.StatusCode.UNAVAILABLE, "a Loom service is unavailable")
            raise

    return wrapper
