"""os-server-groups: `policies` (a one-item list) before 2.64, `policy` and `rules` from
2.64; soft policies from 2.15; project and user ids shown from 2.13."""

from __future__ import annotations

from typing import Any

from loom.conductor.v1 import server_groups_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, empty, ok
from gateway.conductor import call
from gateway.microversion import Microversion
from gateway.routing import MEMBER, READER, Policy, checked_body, checked_query, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, VersionedSchema

_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "format": "name"}


def _policies(mv: Microversion) -> list[str]:
    base = ["affinity", "anti-affinity"]
    return base + (["soft-affinity", "soft-anti-affinity"] if mv.at_least("2.15") else [])


def _create_schema(mv: Microversion) -> dict[str, Any]:
    if mv.at_least("2.64"):
        group: dict[str, Any] = {
            "type": "object",
            "required": ["name", "policy"],
            "additionalProperties": False,
            "properties": {
                "name": _NAME,
                "policy": {"type": "string", "enum": _policies(mv)},
                "rules": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "max_server_per_host": {
                            "type": ["integer", "string"],
                            "pattern": "^[0-9]+$",
                            "minimum": 1,
                        }
                    },
                },
            },
        }
    else:
        group = {
            "type": "object",
            "required": ["name", "policies"],
            "additionalProperties": False,
            "properties": {
                "name": _NAME,
                "policies": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1,
                    "items": {"type": "string", "enum": _policies(mv)},
                },
            },
        }
    return {
        "type": "object",
        "required": ["server_group"],
        "additionalProperties": False,
        "properties": {"server_group": group},
    }


CREATE = VersionedSchema(_create_schema)
LIST_QUERY = Query(
    QueryParam("all_projects"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("offset", "nonneg_integer"),
)


def view(g: server_groups_pb2.ServerGroup, mv: Microversion) -> dict[str, Any]:
    body: dict[str, Any] = {"id": g.id, "name": g.name, "members": list(g.members)}
    if mv.at_least("2.64"):
        body["policy"] = g.policy
        body["rules"] = {
            k: int(v) if v.isascii() and v.isdigit() else v for k, v in g.rules.items()
        }
    else:
        body["policies"] = [g.policy]
        body["metadata"] = {}
    if mv.at_least("2.13"):
        body["project_id"] = g.project_id
        body["user_id"] = g.user_id
    return body


def _scope(ctx: RequestContext) -> str:
    return "" if ctx.is_admin else ctx.project_id


@documented(query=LIST_QUERY, tag="compute", policy=Policy("reader", target="all_projects: admin"))
async def list_groups(request: Request) -> Response:
    """Server groups of the project (admins: of every project with all_projects)."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-server-groups:index")
    q = checked_query(request, LIST_QUERY)
    all_projects = ctx.is_admin and str(q.get("all_projects", "")).lower() not in (
        "",
        "0",
        "false",
        "no",
        "off",
    )
    reply = await call(
        gateway_of(request).conductor.server_groups.ListServerGroups,
        server_groups_pb2.ListServerGroupsRequest(
            project_id="" if all_projects else ctx.project_id,
            limit=q.get("limit", 0),
            offset=q.get("offset", 0),
        ),
    )
    mv = microversion(request)
    return ok({"server_groups": [view(g, mv) for g in reply.groups]})


@documented(body=CREATE.newest, tag="compute", policy=MEMBER)
async def create_group(request: Request) -> Response:
    """Create a server group."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-server-groups:create")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(CREATE.at(mv), body)
    g = body["server_group"]
    policy = g["policy"] if mv.at_least("2.64") else g["policies"][0]
    rules = {k: str(v) for k, v in (g.get("rules") or {}).items()}
    reply = await call(
        gateway_of(request).conductor.server_groups.CreateServerGroup,
        server_groups_pb2.CreateServerGroupRequest(
            request_id=request_id(request),
            group=server_groups_pb2.ServerGroup(
                name=g["name"],
                project_id=ctx.project_id,
                user_id=ctx.user_id,
                policy=policy,
                rules=rules,
            ),
        ),
    )
    return ok({"server_group": view(reply.group, mv)})


@documented(tag="compute", policy=READER)
async def show_group(request: Request) -> Response:
    """One server group."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-server-groups:show")
    reply = await call(
        gateway_of(request).conductor.server_groups.GetServerGroup,
        server_groups_pb2.GetServerGroupRequest(
            id=request.path_params["group_id"], project_id=_scope(ctx)
        ),
    )
    return ok({"server_group": view(reply.group, microversion(request))})


@documented(tag="compute", policy=MEMBER)
async def delete_group(request: Request) -> Response:
    """Delete a server group (204)."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-server-groups:delete")
    await call(
        gateway_of(request).conductor.server_groups.DeleteServerGroup,
        server_groups_pb2.DeleteServerGroupRequest(
            request_id=request_id(request),
            id=request.path_params["group_id"],
            project_id=_scope(ctx),
        ),
    )
    return empty(204)


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/os-server-groups"
    return [
        Route(p, list_groups, methods=["GET"]),
        Route(p, create_group, methods=["POST"]),
        Route(p + "/{group_id}", show_group, methods=["GET"]),
        Route(p + "/{group_id}", delete_group, methods=["DELETE"]),
    ]
