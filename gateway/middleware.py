"""Outermost ASGI layers: request ids on every response, compute microversion
negotiation (with the version headers on every compute response), bounded request bodies
(413 past gateway.max_request_body_bytes, image data excepted), legacy project ids
in compute paths, a last-resort 500 in the API's own error shape, and every request's
latency (gateway.metrics)."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from controlplane.runtime import tracing
from gateway import metrics
from gateway.errors import glance_text, keystone_body, nova_body, placement_body
from gateway.microversion import VersionNotAcceptable, negotiate

log = logging.getLogger("loom.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COMPUTE_API = "/compute/v2.1"
# Keystone project ids are UUIDs, with or without dashes.
_PROJECT_ID = re.compile(r"^[0-9a-fA-F]{32}$|^[0-9a-fA-F-]{36}$")
_VERSION_HEADERS = "OpenStack-API-Version, X-OpenStack-Nova-API-Version"


def error_response_parts(
    path: str, status: int, message: str, fields: dict[str, Any] | None = None
) -> tuple[bytes, str]:
    """The body and content type of an error, in the shape of the API `path` belongs to
    (`fields`: extra members of the error object, where that API has them)."""
    if path.startswith("/image"):
        return glance_text(status, message).encode(), "text/plain; charset=UTF-8"
    if path.startswith("/compute"):
        return json.dumps(nova_body(status, message)).encode(), "application/json"
    if path.startswith("/placement"):
        return json.dumps(placement_body(status, message, fields)).encode(), "application/json"
    return json.dumps(keystone_body(status, message)).encode(), "application/json"


def _streams_data(path: str) -> bool:
    """Image data uploads stream to the store, however large; every other body is bounded."""
    return path.startswith("/image/v2/images/") and path.endswith(("/file", "/stage"))


class _BodyTooLarge(Exception):
    pass


async def _read_bounded(receive: Receive, limit: int) -> list[Message]:
    """Reads the request body's messages, raising _BodyTooLarge past `limit` bytes (so a
    client cannot make the gateway hold an unbounded body in memory)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            raise _BodyTooLarge
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives the buffered messages first, then the real one (disconnects)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        compute_collections: frozenset[str],
        max_body_bytes: int,
        before_request: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        # First path segments under /compute/v2.1 that are resources, not project ids.
        self.collections = compute_collections
        self.max_body_bytes = max_body_bytes
        # Brings shared state up to date before a request is handled (the token
        # revocation list: gateway/auth/revocations.py).
        self.before_request = before_request

    def _strip_project_id(self, scope: Scope) -> None:
        path: str = scope["path"]
        prefix = COMPUTE_API + "/"
        if not path.startswith(prefix):
            return
        rest = path[len(prefix) :]
        first, _, tail = rest.partition("/")
        if first and first not in self.collections and _PROJECT_ID.match(first):
            # Legacy clients put the project id first: /compute/v2.1/{project_id}/servers.
            scope["loom.path_project_id"] = first
            scope["path"] = COMPUTE_API + ("/" + tail if tail else "")
            scope["raw_path"] = scope["path"].encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if tracing.enabled():
            await self._traced(scope, receive, send)
            return
        start = time.perf_counter()
        # 500 unless a response starts: what the client sees when none does.
        status = 500
        try:
            status = await self._handle(scope, receive, send)
        finally:
            metrics.observe(
                scope["method"], metrics.route_template(scope), status, time.perf_counter() - start
            )

    async def _traced(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request in a SERVER span named by its route template once routed (a W3C
        traceparent the client sent is continued): every gRPC call it makes is a child."""
        start = time.perf_counter()
        status = 500
        method: str = scope["method"]
        traceparent = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"traceparent"), None
        )
        with tracing.child_span(
            f"HTTP {method}",
            traceparent,
            {"http.request.method": method},
            kind=tracing.SpanKind.SERVER,
        ) as span:
            try:
                status = await self._handle(scope, receive, send)
            finally:
                route = metrics.route_template(scope)
                metrics.observe(method, route, status, time.perf_counter() - start)
                if span is not None:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    # The id the response and the logs carry: from a trace to the logs.
                    span.set_attribute("loom.request_id", scope.get("loom.request_id", ""))
                    if status >= 500:
                        span.set_status(tracing.Status(tracing.StatusCode.ERROR))

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answers the request; returns the status it answered with."""
        rid = f"req-{uuid.uuid4()}"
        scope["loom.request_id"] = rid
        path: str = scope["path"]
        extra: list[tuple[bytes, bytes]] = [(b"x-openstack-request-id", rid.encode())]
        if path.startswith("/compute"):
            extra.append((b"x-compute-request-id", rid.encode()))
        if path == COMPUTE_API or path.startswith(COMPUTE_API + "/"):
            self._strip_project_id(scope)
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            try:
                version = negotiate(headers)
            except VersionNotAcceptable as exc:
                await self._send_error(send, path, 406, str(exc), extra)
                return 406
            except ValueError as exc:
                await self._send_error(send, path, 400, str(exc), extra)
                return 400
            scope["loom.microversion"] = version
            extra += [
                (b"openstack-api-version", f"compute {version}".encode()),
                (b"x-openstack-nova-api-version", str(version).encode()),
                (b"vary", _VERSION_HEADERS.encode()),
            ]
        if not _streams_data(path):
            too_large = f"Request body is larger than {self.max_body_bytes} bytes."
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body_bytes:
                await self._send_error(send, path, 413, too_large, extra)
                return 413
            try:
                buffered = await _read_bounded(receive, self.max_body_bytes)
            except _BodyTooLarge:
                await self._send_error(send, path, 413, too_large, extra)
                return 413
            receive = _replay(buffered, receive)
        if self.before_request is not None:
            await self.before_request()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid, "path": path})
            if not status:
                await self._send_error(
                    send, path, 500, "Unexpected API Error. Please report this.", extra
                )
                return 500
        return status or 500

    async def _send_error(
        self, send: Send, path: str, status: int, message: str, extra: list[tuple[bytes, bytes]]
    ) -> None:
        body, ctype = error_response_parts(path, status, message)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", ctype.encode()),
                    (b"content-length", str(len(body)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
