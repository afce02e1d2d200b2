"""Compute API version documents (no authentication needed)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.compute.common import COMPUTE
from gateway.microversion import MAX_VERSION, MIN_VERSION
from gateway.routing import PUBLIC, documented
from gateway.state import base_url


def _v20(base: str) -> dict[str, Any]:
    return {
        "id": "v2.0",
        "status": "DEPRECATED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}{COMPUTE}/v2/"}],
    }


def _v21(base: str) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": str(MAX_VERSION),
        "min_version": str(MIN_VERSION),
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": f"{base}{COMPUTE}/v2.1/"}],
    }


def _detail(doc: dict[str, Any], media_version: str) -> dict[str, Any]:
    doc = dict(doc)
    doc["links"] = [
        *doc["links"],
        {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"},
    ]
    doc["media-types"] = [
        {
            "base": "application/json",
            "type": f"application/vnd.openstack.compute+json;version={media_version}",
        }
    ]
    return doc


@documented(tag="compute", policy=PUBLIC)
async def list_versions(request: Request) -> Response:
    """Compute API versions."""
    base = base_url(request)
    return JSONResponse({"versions": [_v20(base), _v21(base)]})


@documented(tag="compute", policy=PUBLIC)
async def show_v21(request: Request) -> Response:
    """The v2.1 version document with the microversion range."""
    return JSONResponse({"version": _detail(_v21(base_url(request)), "2.1")})


@documented(tag="compute", policy=PUBLIC)
async def show_v20(request: Request) -> Response:
    """The deprecated v2.0 version document."""
    return JSONResponse({"version": _detail(_v20(base_url(request)), "2")})
