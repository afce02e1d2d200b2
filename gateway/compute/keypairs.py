"""Compute keypairs: per-user, with `type` from 2.2, an admin's user_id from 2.10,
paging from 2.35, and a public key required from 2.92 (no more server-side keygen)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from loom.catalog.v1 import keypairs_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, empty, next_link, ok
from gateway.conductor import call
from gateway.errors import Forbidden
from gateway.microversion import Microversion
from gateway.routing import MEMBER, READER, checked_body, checked_query, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, VersionedSchema

_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "pattern": r"^[a-zA-Z0-9 _.@-]+$"}


def _create_schema(mv: Microversion) -> dict[str, Any]:
    fields: dict[str, Any] = {"name": _NAME, "public_key": {"type": "string"}}
    if mv.at_least("2.2"):
        fields["type"] = {"type": "string", "enum": ["ssh", "x509"]}
    if mv.at_least("2.10"):
        fields["user_id"] = {"type": "string", "minLength": 1, "maxLength": 255}
    required = ["name", "public_key"] if mv.at_least("2.92") else ["name"]
    return {
        "type": "object",
        "required": ["keypair"],
        "additionalProperties": False,
        "properties": {
            "keypair": {
                "type": "object",
                "required": required,
                "additionalProperties": False,
                "properties": fields,
            }
        },
    }


CREATE = VersionedSchema(_create_schema)
LIST_QUERY = Query(
    QueryParam("user_id"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
)
SHOW_QUERY = Query(QueryParam("user_id"))


def _target_user(ctx: RequestContext, mv: Microversion, asked: str | None) -> str:
    """The user whose keypairs are meant: the caller, or (2.10+, admin) the one asked for."""
    if asked is None or not mv.at_least("2.10") or asked == ctx.user_id:
        return ctx.user_id
    if not ctx.is_admin:
        raise Forbidden("Policy doesn't allow os_compute_api:os-keypairs to be performed.")
    return asked


def _rfc3339(kp: keypairs_pb2.Keypair) -> str:
    return kp.created_at.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


@documented(query=LIST_QUERY, tag="compute", policy=READER)
async def list_keypairs(request: Request) -> Response:
    """The caller's keypairs (or, for an admin from 2.10, another user's)."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-keypairs:index")
    mv = microversion(request)
    q = checked_query(request, LIST_QUERY)
    user_id = _target_user(ctx, mv, q.get("user_id"))
    paged = mv.at_least("2.35")
    limit = q.get("limit") if paged else None
    reply = await call(
        gateway_of(request).conductor.keypairs.ListKeypairs,
        keypairs_pb2.ListKeypairsRequest(
            user_id=user_id, limit=limit or 0, marker=q.get("marker", "") if paged else ""
        ),
    )
    items = []
    for kp in reply.keypairs:
        item: dict[str, Any] = {
            "name": kp.name,
            "public_key": kp.public_key,
            "fingerprint": kp.fingerprint,
        }
        if mv.at_least("2.2"):
            item["type"] = kp.type
        items.append({"keypair": item})
    body: dict[str, Any] = {"keypairs": items}
    if paged and reply.next_marker:
        body["keypairs_links"] = next_link(request, "os-keypairs", reply.next_marker, limit)
    return ok(body)


@documented(body=CREATE.newest, tag="compute", policy=MEMBER)
async def create_keypair(request: Request) -> Response:
    """Import a keypair, or (before 2.92) generate one and return its private key once."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-keypairs:create")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(CREATE.at(mv), body)
    k = body["keypair"]
    user_id = _target_user(ctx, mv, k.get("user_id"))
    reply = await call(
        gateway_of(request).conductor.keypairs.CreateKeypair,
        keypairs_pb2.CreateKeypairRequest(
            request_id=request_id(request),
            user_id=user_id,
            name=k["name"],
            public_key=k.get("public_key", ""),
            type=k.get("type", "ssh"),
            project_id=ctx.project_id,
        ),
    )
    kp = reply.keypair
    out: dict[str, Any] = {
        "name": kp.name,
        "public_key": kp.public_key,
        "fingerprint": kp.fingerprint,
        "user_id": kp.user_id,
    }
    if reply.private_key:
        out["private_key"] = reply.private_key
    if mv.at_least("2.2"):
        out["type"] = kp.type
    return ok({"keypair": out}, 201 if mv.at_least("2.2") else 200)


@documented(query=SHOW_QUERY, tag="compute", policy=READER)
async def show_keypair(request: Request) -> Response:
    """One keypair."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-keypairs:show")
    mv = microversion(request)
    q = checked_query(request, SHOW_QUERY)
    reply = await call(
        gateway_of(request).conductor.keypairs.GetKeypair,
        keypairs_pb2.GetKeypairRequest(
            user_id=_target_user(ctx, mv, q.get("user_id")), name=request.path_params["name"]
        ),
    )
    kp = reply.keypair
    out: dict[str, Any] = {
        "name": kp.name,
        "public_key": kp.public_key,
        "fingerprint": kp.fingerprint,
        "user_id": kp.user_id,
        "created_at": _rfc3339(kp),
        "deleted": False,
        "deleted_at": None,
        "updated_at": None,
        "id": kp.id,
    }
    if mv.at_least("2.2"):
        out["type"] = kp.type
    return ok({"keypair": out})


@documented(query=SHOW_QUERY, tag="compute", policy=MEMBER)
async def delete_keypair(request: Request) -> Response:
    """Delete a keypair."""
    ctx = context(request)
    ctx.require_write("os_compute_api:os-keypairs:delete")
    mv = microversion(request)
    q = checked_query(request, SHOW_QUERY)
    await call(
        gateway_of(request).conductor.keypairs.DeleteKeypair,
        keypairs_pb2.DeleteKeypairRequest(
            request_id=request_id(request),
            user_id=_target_user(ctx, mv, q.get("user_id")),
            name=request.path_params["name"],
        ),
    )
    return empty(204 if mv.at_least("2.2") else 202)


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/os-keypairs"
    return [
        Route(p, list_keypairs, methods=["GET"]),
        Route(p, create_keypair, methods=["POST"]),
        Route(p + "/{name}", show_keypair, methods=["GET"]),
        Route(p + "/{name}", delete_keypair, methods=["DELETE"]),
    ]
