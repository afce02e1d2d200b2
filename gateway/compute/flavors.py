"""Compute flavors: list, detail, show, create/update/delete (admin), extra specs and
os-flavor-access: private flavors shared with projects."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from loom.catalog.v1 import flavors_pb2
from loom.identity.v1 import identity_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, empty, links, next_link, ok
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.microversion import Microversion
from gateway.routing import ADMIN, READER, checked_body, checked_query, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import (
    Query,
    QueryParam,
    VersionedSchema,
    action_schema,
    compile_schema,
)
from gateway.validation.booleans import BOOLEAN_SCHEMA, parse_bool
from gateway.validation.schema import shorten

_MAX_INT = 2147483647
_POSITIVE = {
    "type": ["integer", "string"],
    "pattern": "^[0-9]+$",
    "minimum": 1,
    "maximum": _MAX_INT,
}
_NON_NEGATIVE = {
    "type": ["integer", "string"],
    "pattern": "^[0-9]+$",
    "minimum": 0,
    "maximum": _MAX_INT,
}
_FLAVOR_FIELDS: dict[str, Any] = {
    "name": {"type": "string", "minLength": 1, "maxLength": 255, "format": "name"},
    "id": {
        # Nova takes a number too (clients send integer ids) and stores its text.
        "type": ["string", "number", "null"],
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^(?! )[a-zA-Z0-9. _-]+(?<! )$",
    },
    "ram": _POSITIVE,
    "vcpus": _POSITIVE,
    "disk": _NON_NEGATIVE,
    "OS-FLV-EXT-DATA:ephemeral": _NON_NEGATIVE,
    "swap": _NON_NEGATIVE,
    "rxtx_factor": {
        "type": ["number", "string"],
        "pattern": r"^[0-9]+(\.[0-9]+)?$",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 3.40282e38,
    },
    "os-flavor-access:is_public": BOOLEAN_SCHEMA,
}
_DESCRIPTION = {"type": ["string", "null"], "maxLength": 65535}


def _create_schema(mv: Microversion) -> dict[str, Any]:
    fields = dict(_FLAVOR_FIELDS)
    if mv.at_least("2.55"):
        fields["description"] = _DESCRIPTION
    return {
        "type": "object",
        "required": ["flavor"],
        "additionalProperties": False,
        "properties": {
            "flavor": {
                "type": "object",
                "required": ["name", "ram", "vcpus", "disk"],
                "additionalProperties": False,
                "properties": fields,
            }
        },
    }


CREATE = VersionedSchema(_create_schema)
UPDATE = compile_schema(
    {
        "type": "object",
        "required": ["flavor"],
        "additionalProperties": False,
        "properties": {
            "flavor": {
                "type": "object",
                "required": ["description"],
                "additionalProperties": False,
                "properties": {"description": _DESCRIPTION},
            }
        },
    }
)
# Nova's extra specs: keys of these characters, values of at most 255.
_SPECS = {
    "type": "object",
    "patternProperties": {
        "^[a-zA-Z0-9-_:. /]{1,255}$": {
            "type": ["string", "number", "boolean"],
            "minLength": 1,
            "maxLength": 255,
        }
    },
    "additionalProperties": False,
}
EXTRA_SPECS = compile_schema(
    {
        "type": "object",
        "required": ["extra_specs"],
        "additionalProperties": False,
        "properties": {"extra_specs": _SPECS},
    }
)
SPEC_ITEM = compile_schema({**_SPECS, "minProperties": 1, "maxProperties": 1})

LIST_QUERY = Query(
    QueryParam("is_public"),
    QueryParam("minRam", "nonneg_integer"),
    QueryParam("minDisk", "nonneg_integer"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
    QueryParam(
        "sort_key",
        enum=(
            "created_at",
            "description",
            "disabled",
            "ephemeral_gb",
            "flavorid",
            "id",
            "is_public",
            "memory_mb",
            "name",
            "root_gb",
            "rxtx_factor",
            "swap",
            "updated_at",
            "vcpus",
        ),
    ),
    QueryParam("sort_dir", enum=("asc", "desc")),
)


def _spec_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def brief(request: Request, f: flavors_pb2.Flavor, mv: Microversion) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f.id, "name": f.name, "links": links(request, "flavors", f.id)}
    if mv.at_least("2.55"):
        body["description"] = f.description or None
    return body


def detail(request: Request, f: flavors_pb2.Flavor, mv: Microversion) -> dict[str, Any]:
    body = brief(request, f, mv)
    body.update(
        {
            "ram": f.memory_mb,
            "disk": f.root_gb,
            "vcpus": f.vcpus,
            # Before 2.75 Nova shows a zero swap as "".
            "swap": f.swap_mb if (f.swap_mb or mv.at_least("2.75")) else "",
            "OS-FLV-EXT-DATA:ephemeral": f.ephemeral_gb,
            "OS-FLV-DISABLED:disabled": f.disabled,
            "os-flavor-access:is_public": f.is_public,
            "rxtx_factor": f.rxtx_factor,
        }
    )
    if mv.at_least("2.61"):
        body["extra_specs"] = dict(f.extra_specs)
    return body


def _is_public_filter(raw: str | None, is_admin: bool) -> bool | None:
    """True: public only; False: private only; None: all (admin only, as Nova)."""
    if raw is None or not is_admin:
        return True
    if raw.lower() == "none":
        return None
    try:
        return parse_bool(raw)
    except ValueError:
        raise BadRequest(f"Invalid is_public filter [{shorten(raw)}]") from None


async def _list(request: Request, detailed: bool) -> Response:
    ctx = context(request)
    ctx.require_read("os_compute_api:flavors:index")
    q = checked_query(request, LIST_QUERY)
    public = _is_public_filter(q.get("is_public"), ctx.is_admin)
    max_limit = 1000
    limit = min(q.get("limit", max_limit), max_limit)
    reply = await call(
        gateway_of(request).conductor.flavors.ListFlavors,
        flavors_pb2.ListFlavorsRequest(
            include_private=public is not True,
            # A tenant also sees the private flavors shared with its project.
            project_id="" if ctx.is_admin else ctx.project_id,
            min_ram=q.get("minRam", 0),
            min_disk=q.get("minDisk", 0),
            limit=limit,
            marker=q.get("marker", ""),
            sort_key=q.get("sort_key", "flavorid") if q.get("sort_key") != "id" else "flavorid",
            sort_dir=q.get("sort_dir", "asc"),
        ),
    )
    mv = microversion(request)
    flavors = [f for f in reply.flavors if public is not False or not f.is_public]
    view = detail if detailed else brief
    body: dict[str, Any] = {"flavors": [view(request, f, mv) for f in flavors]}
    if reply.next_marker:
        body["flavors_links"] = next_link(
            request, "flavors/detail" if detailed else "flavors", reply.next_marker, limit
        )
    return ok(body)


@documented(query=LIST_QUERY, tag="compute", policy=READER)
async def list_flavors(request: Request) -> Response:
    """Flavors (id, name, links)."""
    return await _list(request, detailed=False)


@documented(query=LIST_QUERY, tag="compute", policy=READER)
async def list_flavors_detail(request: Request) -> Response:
    """Flavors with their sizes."""
    return await _list(request, detailed=True)


async def _get(request: Request, flavor_id: str, project_id: str = "") -> flavors_pb2.Flavor:
    """The flavor; with project_id, 404 unless it is public or shared with that project."""
    reply = await call(
        gateway_of(request).conductor.flavors.GetFlavor,
        flavors_pb2.GetFlavorRequest(id=flavor_id, project_id=project_id),
    )
    flavor: flavors_pb2.Flavor = reply.flavor
    return flavor


@documented(tag="compute", policy=READER)
async def show_flavor(request: Request) -> Response:
    """One flavor."""
    ctx = context(request)
    ctx.require_read("os_compute_api:flavors:show")
    viewer = "" if ctx.is_admin else ctx.project_id
    flavor = await _get(request, request.path_params["flavor_id"], viewer)
    return ok({"flavor": detail(request, flavor, microversion(request))})


def _as_int(value: Any) -> int:
    return 0 if value in ("", None) else int(value)


@documented(body=CREATE.newest, tag="compute", policy=ADMIN)
async def create_flavor(request: Request) -> Response:
    """Create a flavor (admin)."""
    context(request).require_admin("os_compute_api:os-flavor-manage:create")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(CREATE.at(mv), body)
    f = body["flavor"]
    name = f["name"].strip()
    rxtx = float(f.get("rxtx_factor", 1.0))
    reply = await call(
        gateway_of(request).conductor.flavors.CreateFlavor,
        flavors_pb2.CreateFlavorRequest(
            request_id=request_id(request),
            flavor=flavors_pb2.Flavor(
                id=str(f["id"]) if f.get("id") is not None else "",
                name=name,
                vcpus=_as_int(f["vcpus"]),
                memory_mb=_as_int(f["ram"]),
                root_gb=_as_int(f["disk"]),
                ephemeral_gb=_as_int(f.get("OS-FLV-EXT-DATA:ephemeral", 0)),
                swap_mb=_as_int(f.get("swap", 0)),
                rxtx_factor=rxtx,
                is_public=parse_bool(f.get("os-flavor-access:is_public", True)),
                description=f.get("description") or "",
            ),
        ),
    )
    return ok({"flavor": detail(request, reply.flavor, mv)})


@documented(body=UPDATE, tag="compute", policy=ADMIN)
async def update_flavor(request: Request) -> Response:
    """Change a flavor's description (admin, 2.55+)."""
    mv = microversion(request)
    if not mv.at_least("2.55"):
        raise ApiError(405, "Updating a flavor needs microversion 2.55 or later.")
    context(request).require_admin("os_compute_api:os-flavor-manage:update")
    body = await json_body(request)
    checked_body(UPDATE, body)
    reply = await call(
        gateway_of(request).conductor.flavors.UpdateFlavor,
        flavors_pb2.UpdateFlavorRequest(
            request_id=request_id(request),
            id=request.path_params["flavor_id"],
            description=body["flavor"]["description"] or "",
        ),
    )
    return ok({"flavor": detail(request, reply.flavor, mv)})


@documented(tag="compute", policy=ADMIN)
async def delete_flavor(request: Request) -> Response:
    """Delete a flavor (admin); servers keep their embedded copy."""
    context(request).require_admin("os_compute_api:os-flavor-manage:delete")
    await call(
        gateway_of(request).conductor.flavors.DeleteFlavor,
        flavors_pb2.DeleteFlavorRequest(
            request_id=request_id(request), id=request.path_params["flavor_id"]
        ),
    )
    return empty(202)


# ------------------------------------------------------------------ extra specs


@documented(tag="compute", policy=READER)
async def list_extra_specs(request: Request) -> Response:
    """A flavor's extra specs."""
    context(request).require_read("os_compute_api:os-flavor-extra-specs:index")
    flavor = await _get(request, request.path_params["flavor_id"])
    return ok({"extra_specs": dict(flavor.extra_specs)})


@documented(body=EXTRA_SPECS, tag="compute", policy=ADMIN)
async def set_extra_specs(request: Request) -> Response:
    """Merge extra specs into a flavor (admin)."""
    context(request).require_admin("os_compute_api:os-flavor-extra-specs:create")
    body = await json_body(request)
    checked_body(EXTRA_SPECS, body)
    specs = {str(k): _spec_value(v) for k, v in body["extra_specs"].items()}
    await call(
        gateway_of(request).conductor.flavors.SetFlavorExtraSpecs,
        flavors_pb2.SetFlavorExtraSpecsRequest(
            request_id=request_id(request),
            id=request.path_params["flavor_id"],
            extra_specs=specs,
        ),
    )
    return ok({"extra_specs": specs})


@documented(tag="compute", policy=READER)
async def show_extra_spec(request: Request) -> Response:
    """One extra spec."""
    context(request).require_read("os_compute_api:os-flavor-extra-specs:show")
    fid, key = request.path_params["flavor_id"], request.path_params["key"]
    flavor = await _get(request, fid)
    if key not in flavor.extra_specs:
        raise NotFound(f"Flavor {fid} has no extra specs with key {key}.")
    return ok({key: flavor.extra_specs[key]})


@documented(body=SPEC_ITEM, tag="compute", policy=ADMIN)
async def update_extra_spec(request: Request) -> Response:
    """Set one extra spec (admin); the body's only key must match the URL's."""
    context(request).require_admin("os_compute_api:os-flavor-extra-specs:update")
    key = request.path_params["key"]
    body = await json_body(request)
    checked_body(SPEC_ITEM, body)
    if key not in body:
        raise BadRequest("Request body and URI mismatch")
    specs = {key: _spec_value(body[key])}
    await call(
        gateway_of(request).conductor.flavors.SetFlavorExtraSpecs,
        flavors_pb2.SetFlavorExtraSpecsRequest(
            request_id=request_id(request), id=request.path_params["flavor_id"], extra_specs=specs
        ),
    )
    return ok(specs)


@documented(tag="compute", policy=ADMIN)
async def delete_extra_spec(request: Request) -> Response:
    """Remove one extra spec (admin)."""
    context(request).require_admin("os_compute_api:os-flavor-extra-specs:delete")
    await call(
        gateway_of(request).conductor.flavors.DeleteFlavorExtraSpec,
        flavors_pb2.DeleteFlavorExtraSpecRequest(
            request_id=request_id(request),
            id=request.path_params["flavor_id"],
            key=request.path_params["key"],
        ),
    )
    # 200 with no body, as the API has always answered this DELETE.
    return Response(status_code=200)


def _access_view(access: Iterable[flavors_pb2.FlavorAccess]) -> dict[str, Any]:
    return {
        "flavor_access": [{"flavor_id": a.flavor_id, "tenant_id": a.project_id} for a in access]
    }


@documented(tag="compute", policy=ADMIN)
async def flavor_access(request: Request) -> Response:
    """The projects a private flavor is shared with (admin)."""
    context(request).require_admin("os_compute_api:os-flavor-access")
    reply = await call(
        gateway_of(request).conductor.flavors.ListFlavorAccess,
        flavors_pb2.ListFlavorAccessRequest(id=request.path_params["flavor_id"]),
    )
    return ok(_access_view(reply.access))


_TENANT = {"tenant": {"type": "string", "minLength": 1, "maxLength": 255}}
ACTION = compile_schema(
    {
        "oneOf": [
            action_schema("addTenantAccess", _TENANT),
            action_schema("removeTenantAccess", _TENANT),
        ]
    }
)


@documented(body=ACTION, tag="compute", policy=ADMIN)
async def flavor_action(request: Request) -> Response:
    """Share a private flavor with a project, or stop sharing it (admin)."""
    ctx = context(request)
    body = await json_body(request)
    if isinstance(body, dict) and "addTenantAccess" in body:
        ctx.require_admin("os_compute_api:os-flavor-access:add_tenant_access")
    else:
        ctx.require_admin("os_compute_api:os-flavor-access:remove_tenant_access")
    checked_body(ACTION, body)
    flavors = gateway_of(request).conductor.flavors
    flavor_id = request.path_params["flavor_id"]
    if "addTenantAccess" in body:
        project = body["addTenantAccess"]["tenant"]
        await _require_project(request, project)
        added = await call(
            flavors.AddFlavorAccess,
            flavors_pb2.AddFlavorAccessRequest(
                request_id=request_id(request), id=flavor_id, project_id=project
            ),
        )
        return ok(_access_view(added.access))
    removed = await call(
        flavors.RemoveFlavorAccess,
        flavors_pb2.RemoveFlavorAccessRequest(
            request_id=request_id(request),
            id=flavor_id,
            project_id=body["removeTenantAccess"]["tenant"],
        ),
    )
    return ok(_access_view(removed.access))


async def _require_project(request: Request, project_id: str) -> None:
    """400 unless the identity service knows the project (a flavor is shared with a real
    project, never with a typo)."""
    try:
        await call(
            gateway_of(request).conductor.identity.GetProject,
            identity_pb2.GetProjectRequest(id=project_id),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise BadRequest(f"Project ID {shorten(project_id)} is not a valid project.") from None
        raise


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/flavors"
    return [
        Route(p, list_flavors, methods=["GET"]),
        Route(p, create_flavor, methods=["POST"]),
        Route(p + "/detail", list_flavors_detail, methods=["GET"]),
        Route(p + "/{flavor_id}", show_flavor, methods=["GET"]),
        Route(p + "/{flavor_id}", update_flavor, methods=["PUT"]),
        Route(p + "/{flavor_id}", delete_flavor, methods=["DELETE"]),
        Route(p + "/{flavor_id}/os-extra_specs", list_extra_specs, methods=["GET"]),
        Route(p + "/{flavor_id}/os-extra_specs", set_extra_specs, methods=["POST"]),
        Route(p + "/{flavor_id}/os-extra_specs/{key}", show_extra_spec, methods=["GET"]),
        Route(p + "/{flavor_id}/os-extra_specs/{key}", update_extra_spec, methods=["PUT"]),
        Route(p + "/{flavor_id}/os-extra_specs/{key}", delete_extra_spec, methods=["DELETE"]),
        Route(p + "/{flavor_id}/os-flavor-access", flavor_access, methods=["GET"]),
        Route(p + "/{flavor_id}/action", flavor_action, methods=["POST"]),
    ]
