"""Database failures in the API's terms, not as internal errors: an outage is UNAVAILABLE
(the gateway answers 503 with Retry-After: try again), and a value the database cannot
hold (too long, out of range, a NUL in text) is INVALID_ARGUMENT (400)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.exc import DataError, DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine

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


# The pause between attempts to reach the database at start: doubling up to the cap.
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 5.0


async def wait_until_reachable(engine: AsyncEngine, stop: asyncio.Event, service: str) -> bool:
    """Returns True once the database answers, False if `stop` is set first.

    A service started while the database is down (or restarting) waits for it, as it
    rides out an outage once serving, instead of exiting. Any other error (a wrong
    database name or password, say) is raised at once: waiting would not mend it."""
    pause = FIRST_PAUSE_S
    attempts = 0
    while not stop.is_set():
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:
            if not is_outage(exc) or _refused_for_good(exc):
                raise
            attempts += 1
            log.warning(
                "database unreachable; waiting for it",
                extra={"service": service, "attempt": attempts, "error": str(exc)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            pause = min(pause * 2, MAX_PAUSE_S)
            continue
        if attempts:
            log.info("database reachable", extra={"service": service, "attempts": attempts})
        return True
    return False


# What PostgreSQL says when the configuration is wrong rather than the server away (a
# failed connection carries no SQLSTATE, only the server's message).
_FOR_GOOD = ("does not exist", "authentication failed", "no pg_hba.conf entry")


def _refused_for_good(exc: BaseException) -> bool:
    message = str(exc)
    return any(words in message for words in _FOR_GOOD)


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
