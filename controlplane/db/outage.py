"""Database failures in the API's terms, not as internal errors: an outage is UNAVAILABLE
(the gateway answers 503 with Retry-After: try again), and a value the database cannot
hold (too long, out of range, a NUL in text) is INVALID_ARGUMENT (400)."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from controlplane.runtime.interceptors import Behavior, UnaryWrapper

log = logging.getLogger(__name__)

MESSAGE = "The database is unavailable; try again shortly."
BAD_VALUE = "A value is too long or out of range for what it names."


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or dropped the connection (as
    opposed to a statement the database refused)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class DatabaseOutage(UnaryWrapper):
    """Turns an outage raised by any unary servicer method into UNAVAILABLE, and a value the
    database refused into INVALID_ARGUMENT."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except DataError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, BAD_VALUE)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable", extra={"method": method, "error": str(exc)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, MESSAGE)

        return guarded
