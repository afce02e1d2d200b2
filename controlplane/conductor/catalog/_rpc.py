"""Small helpers every catalog servicer shares: aborting with a code, timestamps, ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc
from google.protobuf.timestamp_pb2 import Timestamp


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
