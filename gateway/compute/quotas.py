"""Absolute limits, os-quota-sets (show, detail, defaults; update for admins) and
os-quota-class-sets (the stored defaults; admins)."""

from __future__ import annotations

from typing import Any

from loom.catalog.v1 import quotas_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import BadRequest, Forbidden
from gateway.microversion import Microversion
from gateway.routing import (
    ADMIN,
    READER,
    READER_OF_PROJECT,
    checked_body,
    checked_query,
    documented,
)
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, VersionedSchema
from gateway.validation.booleans import BOOLEAN_SCHEMA

# Quota names per microversion: network quotas went away in 2.36, file injection in 2.57.
_CORE = (
    "cores",
    "instances",
    "key_pairs",
    "metadata_items",
    "ram",
    "server_groups",
    "server_group_members",
)
_FILES = ("injected_file_content_bytes", "injected_file_path_bytes", "injected_files")
_NETWORK = ("fixed_ips", "floating_ips", "security_group_rules", "security_groups")
_SERVER_GROUPS = ("server_groups", "server_group_members")


def quota_names(mv: Microversion) -> tuple[str, ...]:
    names: tuple[str, ...] = _CORE
    if not mv.at_least("2.57"):
        names += _FILES
    if not mv.at_least("2.36"):
        names += _NETWORK
    return names


def class_quota_names(mv: Microversion) -> tuple[str, ...]:
    """A quota class's names: Nova dropped the network ones in 2.50 (when server groups
    appeared in the class) and file injection in 2.57."""
    if mv.at_least("2.57"):
        return _CORE
    if mv.at_least("2.50"):
        return _CORE + _FILES
    return tuple(n for n in _CORE if n not in _SERVER_GROUPS) + _FILES + _NETWORK


def _limit(limits: quotas_pb2.QuotaLimits, name: str) -> int:
    return int(getattr(limits, name))


def _usage(usage: quotas_pb2.QuotaUsage, name: str) -> int:
    return (
        int(getattr(usage, name))
        if name in ("instances", "cores", "ram", "key_pairs", "server_groups")
        else 0
    )


def _update_schema(mv: Microversion) -> dict[str, Any]:
    # As the database column: a 32-bit signed integer (a larger value is a 400, not a 500).
    value = {
        "type": ["integer", "string"],
        "pattern": "^-?[0-9]+$",
        "minimum": -1,
        "maximum": 2147483647,
    }
    props: dict[str, Any] = dict.fromkeys(quota_names(mv), value)
    props["force"] = BOOLEAN_SCHEMA
    return {
        "type": "object",
        "required": ["quota_set"],
        "additionalProperties": False,
        "properties": {
            "quota_set": {"type": "object", "additionalProperties": False, "properties": props}
        },
    }


UPDATE = VersionedSchema(_update_schema)


def _class_update_schema(mv: Microversion) -> dict[str, Any]:
    value = _update_schema(mv)["properties"]["quota_set"]["properties"]["cores"]
    names = set(class_quota_names(mv)) | set(_SERVER_GROUPS)
    return {
        "type": "object",
        "required": ["quota_class_set"],
        "additionalProperties": False,
        "properties": {
            "quota_class_set": {
                "type": "object",
                "additionalProperties": False,
                "properties": dict.fromkeys(sorted(names), value),
            }
        },
    }


CLASS_UPDATE = VersionedSchema(_class_update_schema)
QUERY = Query(QueryParam("user_id"))


def _project_allowed(ctx: RequestContext, project_id: str) -> None:
    if not ctx.is_admin and project_id != ctx.project_id:
        raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:show to be performed.")


async def _quotas(request: Request, project_id: str, user_id: str) -> quotas_pb2.GetQuotasResponse:
    reply: quotas_pb2.GetQuotasResponse = await call(
        gateway_of(request).conductor.quotas.GetQuotas,
        quotas_pb2.GetQuotasRequest(project_id=project_id, user_id=user_id),
    )
    return reply


LIMITS_QUERY = Query(QueryParam("tenant_id"), QueryParam("reserved"))


@documented(query=LIMITS_QUERY, tag="compute", policy=READER)
async def limits(request: Request) -> Response:
    """The project's absolute limits and usage."""
    ctx = context(request)
    ctx.require_read("os_compute_api:limits")
    # `reserved` is accepted and ignored, as Nova does (clients send reserved=False).
    q = checked_query(request, LIMITS_QUERY)
    project = q.get("tenant_id", ctx.project_id)
    _project_allowed(ctx, project)
    mv = microversion(request)
    reply = await _quotas(request, project, ctx.user_id)
    lim, use = reply.limits, reply.usage
    absolute: dict[str, int] = {
        "maxServerMeta": lim.metadata_items,
        "maxTotalCores": lim.cores,
        "maxTotalInstances": lim.instances,
        "maxTotalKeypairs": lim.key_pairs,
        "maxTotalRAMSize": lim.ram,
        "maxServerGroups": lim.server_groups,
        "maxServerGroupMembers": lim.server_group_members,
        "totalCoresUsed": use.cores,
        "totalInstancesUsed": use.instances,
        "totalRAMUsed": use.ram,
        "totalServerGroupsUsed": use.server_groups,
    }
    if not mv.at_least("2.39"):
        absolute["maxImageMeta"] = lim.metadata_items
    if not mv.at_least("2.57"):
        absolute["maxPersonality"] = lim.injected_files
        absolute["maxPersonalitySize"] = lim.injected_file_content_bytes
    if not mv.at_least("2.36"):
        absolute.update(
            {
                "maxSecurityGroups": lim.security_groups,
                "maxSecurityGroupRules": lim.security_group_rules,
                "maxTotalFloatingIps": lim.floating_ips,
                "totalFloatingIpsUsed": 0,
                "totalSecurityGroupsUsed": 0,
            }
        )
    return ok({"limits": {"absolute": absolute, "rate": []}})


@documented(query=QUERY, tag="compute", policy=READER_OF_PROJECT)
async def show_quotas(request: Request) -> Response:
    """A project's quota limits."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-quota-sets:show")
    project = request.path_params["project_id"]
    _project_allowed(ctx, project)
    q = checked_query(request, QUERY)
    reply = await _quotas(request, project, q.get("user_id", ctx.user_id))
    body: dict[str, Any] = {"id": project}
    body.update({n: _limit(reply.limits, n) for n in quota_names(microversion(request))})
    return ok({"quota_set": body})


@documented(query=QUERY, tag="compute", policy=READER_OF_PROJECT)
async def show_quota_detail(request: Request) -> Response:
    """A project's quota limits with usage."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-quota-sets:detail")
    project = request.path_params["project_id"]
    _project_allowed(ctx, project)
    q = checked_query(request, QUERY)
    reply = await _quotas(request, project, q.get("user_id", ctx.user_id))
    body: dict[str, Any] = {"id": project}
    for n in quota_names(microversion(request)):
        body[n] = {
            "limit": _limit(reply.limits, n),
            "in_use": _usage(reply.usage, n),
            "reserved": 0,
        }
    return ok({"quota_set": body})


@documented(tag="compute", policy=READER)
async def show_defaults(request: Request) -> Response:
    """The default quota limits."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-quota-sets:defaults")
    reply = await call(
        gateway_of(request).conductor.quotas.GetDefaultQuotas, quotas_pb2.GetDefaultQuotasRequest()
    )
    body: dict[str, Any] = {"id": request.path_params["project_id"]}
    body.update({n: _limit(reply.limits, n) for n in quota_names(microversion(request))})
    return ok({"quota_set": body})


@documented(body=UPDATE.newest, tag="compute", policy=ADMIN)
async def update_quotas(request: Request) -> Response:
    """Change a project's quota limits (admin)."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-quota-sets:update")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(UPDATE.at(mv), body)
    # The legacy keys are stored and shown back, as Nova does; none of them is enforced.
    changes = {k: int(v) for k, v in body["quota_set"].items() if k != "force"}
    reply = await call(
        gateway_of(request).conductor.quotas.UpdateQuotas,
        quotas_pb2.UpdateQuotasRequest(
            request_id=request_id(request),
            project_id=request.path_params["project_id"],
            limits=changes,
        ),
    )
    return ok({"quota_set": {n: _limit(reply.limits, n) for n in quota_names(mv)}})


@documented(tag="compute", policy=ADMIN)
async def revert_quotas(request: Request) -> Response:
    """Reset a project's quotas to the defaults (admin)."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-quota-sets:delete")
    defaults = await call(
        gateway_of(request).conductor.quotas.GetDefaultQuotas, quotas_pb2.GetDefaultQuotasRequest()
    )
    await call(
        gateway_of(request).conductor.quotas.UpdateQuotas,
        quotas_pb2.UpdateQuotasRequest(
            request_id=request_id(request),
            project_id=request.path_params["project_id"],
            limits={n: int(getattr(defaults.limits, n)) for n in _CORE + _FILES + _NETWORK},
        ),
    )
    return Response(status_code=202)


def _class_body(
    limits: quotas_pb2.QuotaLimits, mv: Microversion, class_name: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {} if class_name is None else {"id": class_name}
    body.update({n: _limit(limits, n) for n in class_quota_names(mv)})
    return {"quota_class_set": body}


@documented(tag="compute", policy=ADMIN)
async def show_quota_class(request: Request) -> Response:
    """A quota class's limits (admin); the class "default" holds every project's defaults."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-quota-class-sets:show")
    name = request.path_params["class_name"]
    reply: quotas_pb2.GetQuotaClassResponse = await call(
        gateway_of(request).conductor.quotas.GetQuotaClass,
        quotas_pb2.GetQuotaClassRequest(class_name=name),
    )
    return ok(_class_body(reply.limits, microversion(request), name))


@documented(body=CLASS_UPDATE.newest, tag="compute", policy=ADMIN)
async def update_quota_class(request: Request) -> Response:
    """Store a quota class's limits (admin); "default" changes every project's defaults."""
    ctx = context(request)
    ctx.require_admin("os_compute_api:os-quota-class-sets:update")
    mv = microversion(request)
    body = await json_body(request)
    checked_body(CLASS_UPDATE.at(mv), body)
    name = request.path_params["class_name"]
    if len(name) > 255:
        raise BadRequest("Quota class name must be 255 characters or fewer.")
    reply: quotas_pb2.UpdateQuotaClassResponse = await call(
        gateway_of(request).conductor.quotas.UpdateQuotaClass,
        quotas_pb2.UpdateQuotaClassRequest(
            request_id=request_id(request),
            class_name=name,
            limits={k: int(v) for k, v in body["quota_class_set"].items()},
        ),
    )
    # As Nova: the update's answer has no id.
    return ok(_class_body(reply.limits, mv, None))


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/os-quota-sets/{project_id}"
    c = "/compute/v2.1/os-quota-class-sets/{class_name}"
    return [
        Route(c, show_quota_class, methods=["GET"]),
        Route(c, update_quota_class, methods=["PUT"]),
        Route("/compute/v2.1/limits", limits, methods=["GET"]),
        Route(p, show_quotas, methods=["GET"]),
        Route(p, update_quotas, methods=["PUT"]),
        Route(p, revert_quotas, methods=["DELETE"]),
        Route(p + "/detail", show_quota_detail, methods=["GET"]),
        Route(p + "/defaults", show_defaults, methods=["GET"]),
    ]
