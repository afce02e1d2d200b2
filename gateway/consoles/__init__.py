"""The console proxy (websocket → guest VNC) and the noVNC web client pages."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from gateway.consoles.novnc import novnc_file
from gateway.consoles.proxy import websockify


def routes() -> list[BaseRoute]:
    """The console proxy and the noVNC client's static files: not part of the REST API,
    so kept out of the API route table (and /openapi.json)."""
    return [
        WebSocketRoute("/vnc/websockify", websockify),
        Route("/vnc/{path:path}", novnc_file, methods=["GET", "HEAD"]),
    ]
