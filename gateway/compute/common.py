"""What every compute handler shares: the caller's context, links and paging links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.auth.context import RequestContext, authenticate
from gateway.state import base_url, gateway_of

COMPUTE = "/compute"
API = "/compute/v2.1"


def context(request: Request) -> RequestContext:
    """The authenticated caller; a token without any role cannot even read."""
    ctx = authenticate(request, gateway_of(request).signer)
    path_project = request.scope.get("loom.path_project_id")
    if path_project and path_project != ctx.project_id and not ctx.is_admin:
        from gateway.errors import BadRequest

        # Nova refuses a URL naming another project than the token's.
        raise BadRequest("Malformed request URL: URL's project_id does not match the token's.")
    return ctx


def links(request: Request, collection: str, ident: str) -> list[dict[str, str]]:
    base = base_url(request)
    return [
        {"href": f"{base}{API}/{collection}/{ident}", "rel": "self"},
        {"href": f"{base}{COMPUTE}/{collection}/{ident}", "rel": "bookmark"},
    ]


def next_link(
    request: Request, collection: str, marker: str, limit: int | None
) -> list[dict[str, str]]:
    """Nova's `<collection>_links`: a "next" link carrying the caller's other filters."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "marker"]
    if limit is not None and not any(k == "limit" for k, _ in params):
        params.append(("limit", str(limit)))
    params.append(("marker", marker))
    return [{"href": f"{base_url(request)}{API}/{collection}?{urlencode(params)}", "rel": "next"}]


class _OrjsonResponse(JSONResponse):
    """A JSON body encoded by orjson: a detailed list of a thousand servers took the
    standard encoder a good part of the gateway's time."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


def ok(body: Any, status: int = 200) -> Response:
    return _OrjsonResponse(body, status_code=status)


def empty(status: int) -> Response:
    return Response(status_code=status)
