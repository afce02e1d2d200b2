"""Read-only /v3/services, /v3/endpoints and /v3/regions, derived from the same catalog
tokens carry (Loom's catalog is fixed: identity, compute and image on the gateway)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import authenticate
from gateway.errors import NotFound
from gateway.identity import views
from gateway.routing import AUTHENTICATED, documented
from gateway.state import base_url, gateway_of


def _catalog(request: Request) -> list[dict[str, Any]]:
    authenticate(request, gateway_of(request).signer)
    return views.catalog(base_url(request), gateway_of(request).cfg.region)


def _links(request: Request) -> dict[str, Any]:
    return {"self": str(request.url), "previous": None, "next": None}


def _service(s: dict[str, Any], base: str) -> dict[str, Any]:
    return {
        "id": s["id"],
        "type": s["type"],
        "name": s["name"],
        "enabled": True,
        "description": f"Loom {s['type']}",
        "links": {"self": f"{base}/identity/v3/services/{s['id']}"},
    }


def _endpoints(catalog: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    return [
        {
            "id": e["id"],
            "interface": e["interface"],
            "region": e["region"],
            "region_id": e["region_id"],
            "url": e["url"],
            "service_id": s["id"],
            "enabled": True,
            "links": {"self": f"{base}/identity/v3/endpoints/{e['id']}"},
        }
        for s in catalog
        for e in s["endpoints"]
    ]


@documented(tag="identity", policy=AUTHENTICATED)
async def list_services(request: Request) -> Response:
    """Services of the catalog."""
    base = base_url(request)
    services = [_service(s, base) for s in _catalog(request)]
    kind = request.query_params.get("type")
    if kind:
        services = [s for s in services if s["type"] == kind]
    return JSONResponse({"services": services, "links": _links(request)})


@documented(tag="identity", policy=AUTHENTICATED)
async def show_service(request: Request) -> Response:
    """One service."""
    base = base_url(request)
    for s in _catalog(request):
        if s["id"] == request.path_params["service_id"]:
            return JSONResponse({"service": _service(s, base)})
    raise NotFound(f"Could not find service: {request.path_params['service_id']}.")


@documented(tag="identity", policy=AUTHENTICATED)
async def list_endpoints(request: Request) -> Response:
    """Endpoints of the catalog."""
    endpoints = _endpoints(_catalog(request), base_url(request))
    for key in ("interface", "service_id", "region_id"):
        wanted = request.query_params.get(key)
        if wanted:
            endpoints = [e for e in endpoints if e[key] == wanted]
    return JSONResponse({"endpoints": endpoints, "links": _links(request)})


@documented(tag="identity", policy=AUTHENTICATED)
async def show_endpoint(request: Request) -> Response:
    """One endpoint."""
    for e in _endpoints(_catalog(request), base_url(request)):
        if e["id"] == request.path_params["endpoint_id"]:
            return JSONResponse({"endpoint": e})
    raise NotFound(f"Could not find endpoint: {request.path_params['endpoint_id']}.")


@documented(tag="identity", policy=AUTHENTICATED)
async def list_regions(request: Request) -> Response:
    """The region (one per Loom installation)."""
    authenticate(request, gateway_of(request).signer)
    region = gateway_of(request).cfg.region
    body = {
        "id": region,
        "description": "",
        "parent_region_id": None,
        "links": {"self": f"{base_url(request)}/identity/v3/regions/{region}"},
    }
    return JSONResponse({"regions": [body], "links": _links(request)})


def routes() -> list[BaseRoute]:
    v3 = "/identity/v3"
    return [
        Route(v3 + "/services", list_services, methods=["GET"]),
        Route(v3 + "/services/{service_id}", show_service, methods=["GET"]),
        Route(v3 + "/endpoints", list_endpoints, methods=["GET"]),
        Route(v3 + "/endpoints/{endpoint_id}", show_endpoint, methods=["GET"]),
        Route(v3 + "/regions", list_regions, methods=["GET"]),
    ]
