"""Server shares (2.97+): file shares attached to a server.

Loom has no shared file system service, so no server ever has a share: the list is
empty, one share is never found, and attaching one is refused (403) once the request is
otherwise valid, as a deployment without share support answers.
"""

from __future__ import annotations

from typing import Any

from loom.conductor.v1 import servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.compute.interfaces import server_of
from gateway.errors import ApiError, Conflict, Forbidden, NotFound
from gateway.routing import MEMBER, READER, checked_body, checked_query, documented
from gateway.state import json_body, microversion
from gateway.validation import Query, compile_schema
from gateway.validation.schema import shorten
from gateway.views.servers import VM_STATES

ATTACH = compile_schema(
    {
        "type": "object",
        "required": ["share"],
        "additionalProperties": False,
        "properties": {
            "share": {
                "type": "object",
                "required": ["share_id"],
                "additionalProperties": False,
                "properties": {
                    "share_id": {"type": "string", "format": "uuid"},
                    "tag": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 255,
                        "pattern": "^[a-zA-Z0-9_-]+$",
                    },
                },
            }
        },
    }
)
_NO_QUERY = Query()


async def _server(request: Request, ctx: RequestContext) -> servers_pb2.Server:
    if not microversion(request).at_least("2.97"):
        raise NotFound("The resource could not be found.")
    return await server_of(request, ctx)


def _require_state(server: servers_pb2.Server, allowed: tuple[str, ...], action: str) -> None:
    state = VM_STATES.get(server.vm_state, "error")
    if state not in allowed:
        raise Conflict(f"Cannot '{action}' instance {server.id} while it is in vm_state {state}")


def _share_not_found(request: Request) -> ApiError:
    return NotFound(f"Share {shorten(request.path_params['share_id'])} could not be found.")


@documented(tag="compute", policy=READER)
async def list_shares(request: Request) -> Response:
    """The shares attached to a server: none, since Loom has no share service."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-server-shares:index")
    await _server(request, ctx)
    checked_query(request, _NO_QUERY)
    return ok({"shares": []})


@documented(body=ATTACH, tag="compute", policy=MEMBER)
async def attach_share(request: Request) -> Response:
    """Attach a share to a stopped server: refused (403), Loom has no share service."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-server-shares:create")
    server = await _server(request, ctx)
    body: Any = await json_body(request)
    checked_body(ATTACH, body)
    _require_state(server, ("stopped",), "create share")
    raise Forbidden("Loom has no shared file system service: shares cannot be attached.")


@documented(tag="compute", policy=READER)
async def show_share(request: Request) -> Response:
    """One attached share: never found."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-server-shares:show")
    await _server(request, ctx)
    checked_query(request, _NO_QUERY)
    raise _share_not_found(request)


@documented(tag="compute", policy=MEMBER)
async def detach_share(request: Request) -> Response:
    """Detach a share from a stopped (or failed) server: never found."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-server-shares:delete")
    server = await _server(request, ctx)
    _require_state(server, ("stopped", "error"), "delete share")
    raise _share_not_found(request)


def routes() -> list[BaseRoute]:
    s = "/compute/v2.1/servers/{server_id}/shares"
    return [
        Route(s, list_shares, methods=["GET"]),
        Route(s, attach_share, methods=["POST"]),
        Route(s + "/{share_id}", show_share, methods=["GET"]),
        Route(s + "/{share_id}", detach_share, methods=["DELETE"]),
    ]
