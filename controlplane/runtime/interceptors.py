"""The one way Loom wraps the unary methods of a gRPC server: a ServerInterceptor subclass
says how to wrap one method's behaviour; the wrapped handler is made once per method and
reused, so a call pays only for what the wrapper itself does. Streaming methods (health
Watch, reflection) are left as they are unless the subclass says otherwise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class UnaryWrapper(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        """The behaviour to run instead of `behavior` for the unary method `method`
        ("/package.Service/Method")."""
        raise NotImplementedError

    def wrap_streaming(self, method: str, handler: Any) -> Any:
        """The handler to use for a streaming method: itself, unless overridden."""
        del method
        return handler

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        if handler.unary_unary is None:
            wrapped = self.wrap_streaming(method, handler)
        else:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self.wrap(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def service_of(method: str) -> str:
    """ "/loom.conductor.v1.ServersService/GetServer" -> "loom.conductor.v1.ServersService"."""
    return method.lstrip("/").rpartition("/")[0]
