"""The console proxy: a websocket that relays a browser's noVNC to a guest's VNC server.

```
browser ──ws /vnc/websockify?token=…──▶ proxy
   1. Origin: absent (not a browser) or the gateway's own / an allowed origin, else 403
   2. conductor.ValidateConsoleToken: unknown, expired, server deleted → 404
   3. agent.GetConsoleConnectInfo (at the compute_endpoint the conductor named):
      same instance, same host and port the token is bound to, else 403
   4. TCP to the VNC server, accept the upgrade ("binary" subprotocol when offered),
      relay bytes both ways until either side closes
```

Every refusal is an HTTP answer before the upgrade (the ASGI websocket denial response),
so a client sees 401/403/404/503 rather than a dropped connection. Like Nova's
novncproxy, this is the one place a gateway process dials an agent: only to re-check
where the console is, over the agent's gRPC ComputeService, with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlsplit

import grpc
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from loom.conductor.v1 import consoles_pb2
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from controlplane.runtime.grpcserver import insecure_or_secure_channel
from gateway.conductor import call
from gateway.errors import ApiError
from gateway.state import Gateway

log = logging.getLogger("loom.gateway.consoles")

AGENT_DEADLINE_S = 10.0
CONNECT_TIMEOUT_S = 10.0
_CHUNK = 64 * 1024


class Refused(Exception):
    """The connection is refused before the upgrade with this status and sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def origin_of(url: str) -> str:
    """scheme://host[:port], lower-cased, default ports dropped."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(origin: str | None, public_url: str, allowed: tuple[str, ...]) -> bool:
    """No Origin means no browser (so no cross-site page) and is let through; a browser's
    Origin must be the gateway's own public origin or one the operator allowed."""
    if origin is None:
        return True
    try:
        wanted = {origin_of(public_url), *(origin_of(a) for a in allowed)}
        return origin_of(origin) in wanted
    except ValueError:
        return False


def _public_url(websocket: WebSocket, gateway: Gateway) -> str:
    if gateway.cfg.public_url:
        return gateway.cfg.public_url
    host = websocket.headers.get("host", "")
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return f"{scheme}://{host}"


async def _check_agent(gateway: Gateway, grant: consoles_pb2.ValidateConsoleTokenResponse) -> None:
    """The agent must still place this instance's console where the token says."""
    try:
        async with insecure_or_secure_channel(grant.compute_endpoint, gateway.agent_tls) as ch:
            info = await compute_pb2_grpc.ComputeServiceStub(ch).GetConsoleConnectInfo(
                compute_pb2.GetConsoleConnectInfoRequest(
                    instance_id=grant.instance_id, protocol=grant.protocol
                ),
                timeout=AGENT_DEADLINE_S,
            )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise Refused(404, "The server's console is not available.") from exc
        raise Refused(503, "The server's host did not answer.") from exc
    if info.instance_id != grant.instance_id:
        raise Refused(403, "The host answered for another server.")
    if (info.host, info.port) != (grant.console_host, grant.console_port):
        # The console moved (a restart picks a new port): the token no longer applies.
        raise Refused(403, "The console has moved since the token was made; ask for a new one.")


async def _authorise(
    websocket: WebSocket, gateway: Gateway
) -> consoles_pb2.ValidateConsoleTokenResponse:
    origin = websocket.headers.get("origin")
    if not origin_allowed(
        origin, _public_url(websocket, gateway), gateway.cfg.console_allowed_origins
    ):
        raise Refused(403, "The Origin of this request is not allowed.")
    token = websocket.query_params.get("token", "")
    if not token:
        raise Refused(401, "A console token is required (?token=…).")
    try:
        grant: consoles_pb2.ValidateConsoleTokenResponse = await call(
            gateway.conductor.consoles.ValidateConsoleToken,
            consoles_pb2.ValidateConsoleTokenRequest(token=token),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise Refused(404, "The token is invalid or has expired.") from exc
        raise Refused(503 if exc.status >= 500 else exc.status, exc.message) from exc
    if grant.protocol != "vnc":
        raise Refused(403, "This proxy serves VNC consoles only.")
    await _check_agent(gateway, grant)
    return grant


async def websockify(websocket: WebSocket) -> None:
    gateway: Gateway = websocket.app.state.gateway
    try:
        grant = await _authorise(websocket, gateway)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(grant.console_host, grant.console_port),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError) as exc:
            raise Refused(503, "The console server did not answer.") from exc
    except Refused as refused:
        log.info(
            "console refused",
            extra={"status": refused.status, "reason": refused.message},
        )
        await _deny(websocket, refused)
        return
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in offered else None)
    log.info("console opened", extra={"instance": grant.instance_id})
    try:
        await _relay(websocket, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
        log.info("console closed", extra={"instance": grant.instance_id})


async def _deny(websocket: WebSocket, refused: Refused) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            PlainTextResponse(refused.message + "\n", status_code=refused.status)
        )
    else:
        await websocket.close(code=1008, reason=refused.message[:120])


async def _relay(
    websocket: WebSocket, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    async def client_to_server() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                data = (message.get("text") or "").encode()
            writer.write(data)
            await writer.drain()

    async def server_to_client() -> None:
        while data := await reader.read(_CHUNK):
            await websocket.send_bytes(data)

    tasks = [
        asyncio.create_task(client_to_server(), name="console-up"),
        asyncio.create_task(server_to_client(), name="console-down"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(
                asyncio.CancelledError, WebSocketDisconnect, OSError, RuntimeError
            ):
                await task
        with contextlib.suppress(RuntimeError, OSError):
            await websocket.close()
