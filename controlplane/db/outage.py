"""A database outage is UNAVAILABLE, not an internal error: the callee says "try again",
and the gateway answers 503 with Retry-After instead of 500."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from controlplane.runtime.interceptors import Behavior, UnaryWrapper

log = logging.getLogger(__name__)

MESSAGE = "The database is unavailable; try again shortly."


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or dropped the connection (as
    opposed to a statement the database refused)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class DatabaseOutage(UnaryWrapper):
    """Turns an outage raised by any unary servicer method into UNAVAILABLE."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable", extra={"method": method, "error": str(exc)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, MESSAGE)

        return guarded
