"""A database outage is UNAVAILABLE, not an internal error: the callee says "try again",
and the gateway answers 503 with Retry-After instead of 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

log = logging.getLogger(__name__)

MESSAGE = "The database is unavailable; try again shortly."


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached or dropped the connection (as
    opposed to a statement the database refused)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class DatabaseOutage(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns an outage raised by any unary servicer method into UNAVAILABLE."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        behavior = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                log.warning("database unavailable", extra={"method": method, "error": str(exc)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, MESSAGE)

        wrapped = grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped
