"""A server's tags (from 2.26): list, replace and delete them all, and check, add and
delete one. The conductor keeps them on the server (at most 50, each 1-60 characters
without "," or "/") and refuses a change while the server is building."""

from __future__ import annotations

from loom.conductor.v1 import servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.compute.interfaces import server_of
from gateway.conductor import call
from gateway.errors import BadRequest, NotFound
from gateway.routing import MEMBER, READER, checked_body, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import compile_schema

_TAG = {"type": "string", "pattern": "^[^,/]*$", "minLength": 1, "maxLength": 60}
TAGS = compile_schema(
    {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": _TAG, "maxItems": 50}},
        "required": ["tags"],
        "additionalProperties": False,
    }
)


def _from_2_26(request: Request) -> RequestContext:
    if not microversion(request).at_least("2.26"):
        raise NotFound("The resource could not be found.")
    return context(request)


def _scope(ctx: RequestContext) -> str:
    return "" if ctx.is_admin else ctx.project_id


async def _set(
    request: Request,
    ctx: RequestContext,
    tags: list[str],
    *,
    replace: bool = False,
    remove: list[str] | None = None,
) -> servers_pb2.SetServerTagsResponse:
    reply: servers_pb2.SetServerTagsResponse = await call(
        gateway_of(request).conductor.servers.SetServerTags,
        servers_pb2.SetServerTagsRequest(
            request_id=request_id(request),
            id=request.path_params["server_id"],
            project_id=_scope(ctx),
            tags=tags,
            replace=replace,
            remove=remove or [],
        ),
    )
    return reply


def _tag(request: Request) -> str:
    tag = str(request.path_params["tag"])
    if not 1 <= len(tag) <= 60 or "," in tag or "/" in tag:
        raise BadRequest(
            f"Tag '{tag[:64]}' is invalid: a tag is 1-60 characters without ',' or '/'."
        )
    return tag


@documented(tag="compute", policy=READER)
async def list_tags(request: Request) -> Response:
    """The server's tags."""
    ctx = _from_2_26(request)
    ctx.require_read("os_compute_api:os-server-tags:index")
    return ok({"tags": list((await server_of(request, ctx)).tags)})


@documented(body=TAGS, tag="compute", policy=MEMBER)
async def replace_tags(request: Request) -> Response:
    """Replace every tag of the server."""
    ctx = _from_2_26(request)
    ctx.require_write("os_compute_api:os-server-tags:update_all")
    await server_of(request, ctx)  # another project's server is 404 whatever the body
    body = await json_body(request)
    checked_body(TAGS, body)
    reply = await _set(request, ctx, list(body["tags"]), replace=True)
    return ok({"tags": list(reply.tags)})


@documented(tag="compute", policy=MEMBER)
async def delete_tags(request: Request) -> Response:
    """Delete every tag of the server."""
    ctx = _from_2_26(request)
    ctx.require_write("os_compute_api:os-server-tags:delete_all")
    await _set(request, ctx, [], replace=True)
    return Response(status_code=204)


@documented(tag="compute", policy=READER)
async def check_tag(request: Request) -> Response:
    """204 when the server has the tag, 404 otherwise."""
    ctx = _from_2_26(request)
    ctx.require_read("os_compute_api:os-server-tags:show")
    tag = str(request.path_params["tag"])
    if tag not in (await server_of(request, ctx)).tags:
        raise NotFound(f"Server {request.path_params['server_id']} has no tag '{tag[:64]}'")
    return Response(status_code=204)


@documented(tag="compute", policy=MEMBER)
async def add_tag(request: Request) -> Response:
    """Add one tag: 201 with its location when new, 204 when the server had it."""
    ctx = _from_2_26(request)
    ctx.require_write("os_compute_api:os-server-tags:update")
    reply = await _set(request, ctx, [_tag(request)])
    if not reply.changed:
        return Response(status_code=204)
    return Response(status_code=201, headers={"Location": str(request.url)})


@documented(tag="compute", policy=MEMBER)
async def delete_tag(request: Request) -> Response:
    """Delete one tag; 404 when the server does not have it."""
    ctx = _from_2_26(request)
    ctx.require_write("os_compute_api:os-server-tags:delete")
    await _set(request, ctx, [], remove=[str(request.path_params["tag"])])
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/servers/{server_id}/tags"
    return [
        Route(p, list_tags, methods=["GET"]),
        Route(p, replace_tags, methods=["PUT"]),
        Route(p, delete_tags, methods=["DELETE"]),
        Route(p + "/{tag}", check_tag, methods=["GET"]),
        Route(p + "/{tag}", add_tag, methods=["PUT"]),
        Route(p + "/{tag}", delete_tag, methods=["DELETE"]),
    ]
