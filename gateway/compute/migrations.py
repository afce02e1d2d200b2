"""Server moves and migration records: the resize, confirmResize, revertResize, migrate,
os-migrateLive and evacuate server actions; GET /os-migrations (admin);
GET /servers/{id}/migrations[/{id}] (in-progress live migrations)."""

from __future__ import annotations

import secrets
from typing import Any

from loom.conductor.v1 import migrations_pb2, servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, empty, next_link, ok
from gateway.compute.views_time import iso_micro
from gateway.conductor import call
from gateway.errors import BadRequest, NotFound
from gateway.microversion import Microversion
from gateway.routing import ADMIN, checked_body, checked_query, documented
from gateway.state import gateway_of, microversion, request_id
from gateway.validation import Query, QueryParam, VersionedSchema, compile_schema
from gateway.validation.booleans import BOOLEAN_SCHEMA, parse_bool

MOVE_ACTIONS = frozenset(
    {"resize", "confirmResize", "revertResize", "migrate", "os-migrateLive", "evacuate"}
)

_FLAVOR_REF: dict[str, Any] = {
    "type": ["string", "integer"],
    "minLength": 1,
    "maxLength": 255,
    "minimum": 1,
}
RESIZE = compile_schema(
    {
        "type": "object",
        "required": ["flavorRef"],
        "additionalProperties": False,
        "properties": {
            "flavorRef": _FLAVOR_REF,
            "OS-DCF:diskConfig": {"type": "string", "enum": ["AUTO", "MANUAL"]},
        },
    }
)
# Nova reads no body for these: null is what clients send ({} is accepted too).
NO_BODY = compile_schema({"type": ["null", "object"], "additionalProperties": False})


def _migrate_schema(mv: Microversion) -> dict[str, Any]:
    if not mv.at_least("2.56"):
        return {"type": ["null", "object"], "additionalProperties": False}
    return {
        "type": ["null", "object"],
        "additionalProperties": False,
        "properties": {
            "host": {"type": ["string", "null"], "minLength": 1, "maxLength": 255},
        },
    }


MIGRATE = VersionedSchema(_migrate_schema)


def _live_schema(mv: Microversion) -> dict[str, Any]:
    props: dict[str, Any] = {"host": {"type": ["string", "null"], "maxLength": 255}}
    required = ["host", "block_migration"]
    if mv.at_least("2.25"):
        props["block_migration"] = {"oneOf": [BOOLEAN_SCHEMA, {"enum": ["auto"]}]}
    else:
        props["block_migration"] = BOOLEAN_SCHEMA
        props["disk_over_commit"] = BOOLEAN_SCHEMA
        required.append("disk_over_commit")
    if mv.at_least("2.30") and not mv.at_least("2.68"):
        props["force"] = BOOLEAN_SCHEMA
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": props,
    }


LIVE = VersionedSchema(_live_schema)


def _evacuate_schema(mv: Microversion) -> dict[str, Any]:
    """Nova's evacuate body: onSharedStorage (required) before 2.14, force 2.29 to 2.67."""
    props: dict[str, Any] = {
        "host": {"type": "string", "minLength": 1, "maxLength": 255},
        "adminPass": {"type": "string"},
    }
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
    if not mv.at_least("2.14"):
        props["onSharedStorage"] = BOOLEAN_SCHEMA
        schema["required"] = ["onSharedStorage"]
    if mv.at_least("2.29") and not mv.at_least("2.68"):
        props["force"] = BOOLEAN_SCHEMA
    return schema


EVACUATE = VersionedSchema(_evacuate_schema)


def _flavor_id(ref: Any) -> str:
    """flavorRef is an id or a link ending in one."""
    text = str(ref).rstrip("/")
    return text.rsplit("/", 1)[-1]


async def move_action(request: Request, ctx: RequestContext, body: dict[str, Any]) -> Response:
    """resize, confirmResize, revertResize (the server's project) and migrate (admin): 202."""
    action, args = next(iter(body.items()))
    common: dict[str, Any] = {
        "request_id": request_id(request),
        "id": request.path_params["server_id"],
        "project_id": "" if ctx.is_admin else ctx.project_id,
        "user_id": ctx.user_id,
        # An admin may act on a locked server; its owner may not.
        "override_lock": ctx.is_admin,
    }
    stubs = gateway_of(request).conductor.migrations
    if action == "resize":
        checked_body(RESIZE, args)
        ctx.require_write("os_compute_api:servers:resize")
        await call(
            stubs.ResizeServer,
            migrations_pb2.ResizeServerRequest(**common, flavor_id=_flavor_id(args["flavorRef"])),
        )
    elif action == "confirmResize":
        checked_body(NO_BODY, args)
        ctx.require_write("os_compute_api:servers:confirm_resize")
        await call(stubs.ConfirmResize, migrations_pb2.ConfirmResizeRequest(**common))
        return empty(204)
    elif action == "revertResize":
        checked_body(NO_BODY, args)
        ctx.require_write("os_compute_api:servers:revert_resize")
        await call(stubs.RevertResize, migrations_pb2.RevertResizeRequest(**common))
    elif action == "evacuate":
        return await _evacuate(request, ctx, args, common)
    elif action == "os-migrateLive":
        checked_body(LIVE.at(microversion(request)), args)
        ctx.require_admin("os_compute_api:os-migrate-server:migrate_live")
        block = args["block_migration"]
        if block != "auto" and not parse_bool(block):
            # Loom's hosts share no instance storage, so every move carries its disks.
            raise BadRequest("Loom's hosts share no instance storage: use block_migration.")
        if "disk_over_commit" in args and parse_bool(args["disk_over_commit"]):
            raise BadRequest("Loom never over-commits disk beyond the host's allocation ratio.")
        if "force" in args and parse_bool(args["force"]):
            raise BadRequest("Loom always checks the requested host: force is not offered.")
        await call(
            stubs.LiveMigrateServer,
            migrations_pb2.LiveMigrateServerRequest(**common, host=args.get("host") or ""),
        )
    else:
        checked_body(MIGRATE.at(microversion(request)), args)
        ctx.require_admin("os_compute_api:os-migrate-server:migrate")
        host = (args or {}).get("host") or ""
        await call(stubs.MigrateServer, migrations_pb2.MigrateServerRequest(**common, host=host))
    return empty(202)


async def _evacuate(
    request: Request, ctx: RequestContext, args: Any, common: dict[str, Any]
) -> Response:
    """evacuate (admin): 200, with {"adminPass": ...} before 2.14 and no body from 2.14."""
    mv = microversion(request)
    checked_body(EVACUATE.at(mv), args)
    ctx.require_admin("os_compute_api:os-evacuate")
    if "onSharedStorage" in args and parse_bool(args["onSharedStorage"]):
        raise BadRequest("Loom's hosts share no instance storage: onSharedStorage must be false.")
    force = "force" in args and parse_bool(args["force"])
    host = args.get("host") or ""
    if force and not host:
        raise BadRequest("Can't force to a non-provided destination")
    common.pop("override_lock")
    await call(
        gateway_of(request).conductor.migrations.EvacuateServer,
        migrations_pb2.EvacuateServerRequest(
            **common,
            host=host,
            force=force,
            # From 2.95 an evacuated server rests stopped on its new host.
            stop_at_destination=mv.at_least("2.95"),
        ),
    )
    if mv.at_least("2.14"):
        return empty(200)
    # Loom sets no guest password (as for rebuild); the API answers one as Nova does.
    return ok({"adminPass": args.get("adminPass") or secrets.token_urlsafe(9)})


# ------------------------------------------------------------------ records


def migration_view(
    request: Request, m: migrations_pb2.Migration, mv: Microversion
) -> dict[str, Any]:
    """One migration as GET /os-migrations shows it at this microversion."""
    body: dict[str, Any] = {
        "id": m.id,
        "instance_uuid": m.instance_uuid,
        "source_compute": m.source_compute or None,
        "source_node": m.source_node or None,
        "dest_compute": m.dest_compute or None,
        "dest_node": m.dest_node or None,
        "dest_host": m.dest_host or None,
        "old_instance_type_id": m.old_instance_type_id or None,
        "new_instance_type_id": m.new_instance_type_id or None,
        "status": m.status,
        "created_at": iso_micro(m.created_at),
        "updated_at": iso_micro(m.updated_at),
    }
    if mv.at_least("2.23"):
        body["migration_type"] = m.migration_type
        # Links name in-progress live migrations only; Loom performs none.
    if mv.at_least("2.59"):
        body["uuid"] = m.uuid
    if mv.at_least("2.80"):
        body["user_id"] = m.user_id
        body["project_id"] = m.project_id
    return body


def _list_query(mv: Microversion) -> Query:
    params = [
        QueryParam("host"),
        QueryParam("status"),
        QueryParam("instance_uuid"),
        QueryParam("migration_type", enum=("live-migration", "migration", "resize", "evacuation")),
        QueryParam("source_compute"),
        QueryParam("hidden"),
        QueryParam("cell_name"),
    ]
    if mv.at_least("2.59"):
        params += [
            QueryParam("limit", "nonneg_integer"),
            QueryParam("marker"),
            QueryParam("changes-since", "datetime"),
        ]
    if mv.at_least("2.66"):
        params.append(QueryParam("changes-before", "datetime"))
    if mv.at_least("2.80"):
        params += [QueryParam("user_id"), QueryParam("project_id")]
    return Query(*params)


_QUERIES = {minor: _list_query(Microversion(2, minor)) for minor in (1, 59, 66, 80)}


def _query_for(mv: Microversion) -> Query:
    minor = max(m for m in _QUERIES if mv.at_least(f"2.{m}"))
    return _QUERIES[minor]


@documented(tag="compute", policy=ADMIN)
async def list_migrations(request: Request) -> Response:
    """Migration records of every project (admin), newest first."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-migrations:index")
    mv = microversion(request)
    # Before 2.59 Nova ignored parameters it did not know; from 2.59 it refuses them.
    q = checked_query(request, _query_for(mv), ignore_unknown=not mv.at_least("2.59"))
    req = migrations_pb2.ListMigrationsRequest(
        instance_uuid=q.get("instance_uuid") or "",
        host=q.get("host") or "",
        status=q.get("status") or "",
        migration_type=q.get("migration_type") or "",
        source_compute=q.get("source_compute") or "",
        user_id=q.get("user_id") or "",
        project_id=q.get("project_id") or "",
        marker=q.get("marker") or "",
    )
    limit = q.get("limit")
    if limit is not None:
        req.limit = max(int(limit), 0) or 0
    if q.get("changes-since") is not None:
        req.changes_since.FromDatetime(q["changes-since"])
    if q.get("changes-before") is not None:
        req.changes_before.FromDatetime(q["changes-before"])
    if limit == 0:
        return ok({"migrations": []})
    try:
        reply = await call(gateway_of(request).conductor.migrations.ListMigrations, req)
    except NotFound as exc:
        if req.marker:
            raise BadRequest(f"Marker {req.marker[:64]} could not be found.") from exc
        raise
    body: dict[str, Any] = {
        "migrations": [migration_view(request, m, mv) for m in reply.migrations]
    }
    if mv.at_least("2.59") and limit and len(reply.migrations) == limit:
        body["migrations_links"] = next_link(
            request, "os-migrations", reply.migrations[-1].uuid, int(limit)
        )
    return ok(body)


async def _server_live_migrations(
    request: Request, ctx: RequestContext
) -> list[migrations_pb2.Migration]:
    project = "" if ctx.is_admin else ctx.project_id
    # 404 for a server that does not exist (or is another project's).
    await call(
        gateway_of(request).conductor.servers.GetServer,
        servers_pb2.GetServerRequest(id=request.path_params["server_id"], project_id=project),
    )
    reply = await call(
        gateway_of(request).conductor.migrations.ListMigrations,
        migrations_pb2.ListMigrationsRequest(
            instance_uuid=request.path_params["server_id"],
            project_id="" if ctx.is_admin else ctx.project_id,
            migration_type="live-migration",
            in_progress=True,
        ),
    )
    return list(reply.migrations)


def _server_migration_view(m: migrations_pb2.Migration, mv: Microversion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": m.id,
        "server_uuid": m.instance_uuid,
        "source_compute": m.source_compute,
        "source_node": m.source_node,
        "dest_compute": m.dest_compute,
        "dest_node": m.dest_node,
        "dest_host": m.dest_host,
        "status": m.status,
        "created_at": iso_micro(m.created_at),
        "updated_at": iso_micro(m.updated_at),
        # Loom does not measure a live migration's progress.
        "memory_processed_bytes": None,
        "memory_remaining_bytes": None,
        "memory_total_bytes": None,
        "disk_processed_bytes": None,
        "disk_remaining_bytes": None,
        "disk_total_bytes": None,
    }
    if mv.at_least("2.59"):
        body["uuid"] = m.uuid
    if mv.at_least("2.80"):
        body["user_id"] = m.user_id
        body["project_id"] = m.project_id
    return body


def _require_2_23(mv: Microversion) -> None:
    if not mv.at_least("2.23"):
        raise NotFound("The resource could not be found.")


@documented(tag="compute", policy=ADMIN)
async def list_server_migrations(request: Request) -> Response:
    """A server's in-progress live migrations (2.23+, admin)."""
    ctx = context(request)
    mv = microversion(request)
    _require_2_23(mv)
    ctx.require_admin("os_compute_api:servers:migrations:index")
    found = await _server_live_migrations(request, ctx)
    return ok({"migrations": [_server_migration_view(m, mv) for m in found]})


@documented(tag="compute", policy=ADMIN)
async def show_server_migration(request: Request) -> Response:
    """One in-progress live migration of a server (2.23+, admin)."""
    ctx = context(request)
    mv = microversion(request)
    _require_2_23(mv)
    ctx.require_admin("os_compute_api:servers:migrations:show")
    wanted = request.path_params["migration_id"]
    for m in await _server_live_migrations(request, ctx):
        if str(m.id) == wanted:
            return ok({"migration": _server_migration_view(m, mv)})
    raise NotFound(
        f"In-progress live migration {wanted[:64]} is not found for server "
        f"{request.path_params['server_id'][:64]}."
    )


def routes() -> list[BaseRoute]:
    s = "/compute/v2.1/servers/{server_id}/migrations"
    return [
        Route("/compute/v2.1/os-migrations", list_migrations, methods=["GET"]),
        Route(s, list_server_migrations, methods=["GET"]),
        Route(s + "/{migration_id}", show_server_migration, methods=["GET"]),
    ]
