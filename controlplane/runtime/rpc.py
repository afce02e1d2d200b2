"""What every domain servicer shares: domain errors turned into gRPC status codes (one
wrapper for every method), aborting with a code, timestamps and ids."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound, QuotaExceeded

log = logging.getLogger(__name__)


async def abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the RPC with `code`; the message is what the gateway shows the tenant."""
    await context.abort(code, message)
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def new_uuid() -> str:
    return str(uuid.uuid4())


def id_for_request(kind: str, request_id: str) -> str:
    """A UUID derived from the caller's request id: a retried create finds the row its
    first attempt made instead of making a second one."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"loom:{kind}:{request_id}"))


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    # SQLite hands naive datetimes back; Loom only ever stores UTC.
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


_CODES: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION),
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
