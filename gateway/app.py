"""The gateway's ASGI app: Identity v3, Compute v2.1 and Image v2 routes, error shapes,
request ids and microversions."""

from __future__ import annotations

import logging
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import consoles
from gateway.compute import routes as compute_routes
from gateway.errors import ApiError
from gateway.identity import routes as identity_routes
from gateway.image import routes as image_routes
from gateway.middleware import COMPUTE_API, GatewayMiddleware, error_response_parts
from gateway.openapi import openapi
from gateway.placement import routes as placement_routes
from gateway.state import Gateway

log = logging.getLogger("loom.gateway")


def _error(
    request: Request,
    status: int,
    message: str,
    headers: dict[str, str],
    fields: dict[str, Any] | None = None,
) -> Response:
    body, ctype = error_response_parts(request.url.path, status, message, fields)
    return Response(body, status_code=status, media_type=ctype.split(";")[0], headers=headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error(request, exc.status, exc.message, exc.headers, exc.fields)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "The resource could not be found.", 405: "The method is not allowed."}
    if exc.status_code == 405 and request.url.path.startswith("/placement"):
        messages[405] = (
            "Loom's placement API is read-only: the scheduler alone writes inventories "
            "(from the agents' reports) and allocations (its claims)."
        )
    return _error(
        request,
        exc.status_code,
        messages.get(exc.status_code, str(exc.detail)),
        dict(exc.headers or {}),
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error", exc_info=exc, extra={"path": request.url.path})
    return _error(request, 500, "Unexpected API Error. Please report this.", {})


def all_routes() -> list[BaseRoute]:
    return [
        *identity_routes.routes(),
        *compute_routes.routes(),
        *image_routes.routes(),
        *placement_routes.routes(),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def compute_collections(routes: list[BaseRoute]) -> frozenset[str]:
    """First path segments under /compute/v2.1: anything else there is a project id."""
    prefix = COMPUTE_API + "/"
    return frozenset(
        r.path[len(prefix) :].split("/")[0]
        for r in routes
        if isinstance(r, Route) and r.path.startswith(prefix)
    )


def build_app(gateway: Gateway) -> Any:
    routes = all_routes()
    app = Starlette(
        routes=[*routes, *consoles.routes()],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.gateway = gateway
    app.router.redirect_slashes = False
    revocations = gateway.signer.revocations
    return GatewayMiddleware(
        app,
        compute_collections(routes),
        gateway.cfg.max_request_body_bytes,
        revocations.refresh_if_due if revocations is not None else None,
    )
