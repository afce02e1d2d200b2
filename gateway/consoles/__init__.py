"""The console proxy (websocket → guest VNC) and the noVNC web client pages."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route, WebSocketRoute

from gateway.consoles.novnc import novnc_file
from gateway.consoles.proxy import websockify


def routes() -> list[BaseRoute]:
    return [
        WebSocketRoute("/vnc/websockify", websockify),
        Route("/vnc/{path:path}", novnc_file, methods=["GET", "HEAD"]),
    ]
