"""The fleet as operators see it: availability zones, os-services, os-hypervisors."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from loom.conductor.v1 import diagnostics_pb2, fleet_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, empty, next_link, ok
from gateway.compute.uptime_view import uptime_text
from gateway.compute.views_time import iso_micro
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.microversion import Microversion
from gateway.routing import ADMIN, READER, checked_body, checked_query, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, compile_schema
from gateway.validation.schema import shorten

# ------------------------------------------------------------------ availability zones


@documented(tag="compute", policy=READER)
async def list_zones(request: Request) -> Response:
    """Availability zones."""
    context(request).require_read("os_compute_api:os-availability-zone:list")
    reply = await call(
        gateway_of(request).conductor.fleet.ListAvailabilityZones,
        fleet_pb2.ListAvailabilityZonesRequest(detailed=False),
    )
    return ok(
        {
            "availabilityZoneInfo": [
                {"zoneName": z.name, "zoneState": {"available": z.available}, "hosts": None}
                for z in reply.zones
            ]
        }
    )


@documented(tag="compute", policy=ADMIN)
async def list_zones_detail(request: Request) -> Response:
    """Availability zones with their hosts and services (admin)."""
    context(request).require_admin("os_compute_api:os-availability-zone:detail")
    reply = await call(
        gateway_of(request).conductor.fleet.ListAvailabilityZones,
        fleet_pb2.ListAvailabilityZonesRequest(detailed=True),
    )
    zones = []
    for z in reply.zones:
        hosts: dict[str, dict[str, Any]] = {}
        for svc in z.services:
            hosts.setdefault(svc.host, {})[api_binary(svc.binary)] = {
                "available": svc.up,
                "active": svc.enabled,
                "updated_at": iso_micro(svc.updated_at),
            }
        zones.append(
            {"zoneName": z.name, "zoneState": {"available": z.available}, "hosts": hosts or None}
        )
    return ok({"availabilityZoneInfo": zones})


# ------------------------------------------------------------------ services

# Loom's services record themselves under their own names; the API shows (and filters on)
# the binary names that OpenStack's tools and scripts look for.
_API_BINARY = {
    "loom-compute": "nova-compute",
    "loom-scheduler": "nova-scheduler",
    "loom-conductor": "nova-conductor",
}
_LOOM_BINARY = {api: loom for loom, api in _API_BINARY.items()}


def api_binary(stored: str) -> str:
    """The binary name the API shows for a Loom service."""
    return _API_BINARY.get(stored, stored)


def loom_binary(requested: str) -> str:
    """The stored binary name for one the API was given (either spelling is accepted)."""
    return _LOOM_BINARY.get(requested, requested)


def _service(svc: fleet_pb2.Service, mv: Microversion) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": svc.uuid if mv.at_least("2.53") else svc.id,
        "binary": api_binary(svc.binary),
        "host": svc.host,
        "zone": svc.zone,
        "status": "enabled" if svc.enabled else "disabled",
        "state": "up" if svc.up else "down",
        "updated_at": iso_micro(svc.updated_at),
        "disabled_reason": svc.disabled_reason or None,
    }
    if mv.at_least("2.11"):
        body["forced_down"] = svc.forced_down
    return body


SERVICES_QUERY = Query(QueryParam("binary"), QueryParam("host"))


@documented(query=SERVICES_QUERY, tag="compute", policy=ADMIN)
async def list_services(request: Request) -> Response:
    """Service records with their state (admin)."""
    context(request).require_admin("os_compute_api:os-services:list")
    mv = microversion(request)
    # Nova refuses unknown query parameters here only from 2.75; before, it ignores them.
    q = checked_query(request, SERVICES_QUERY, ignore_unknown=not mv.at_least("2.75"))
    reply = await call(
        gateway_of(request).conductor.fleet.ListServices,
        fleet_pb2.ListServicesRequest(
            binary=loom_binary(q.get("binary", "")), host=q.get("host", "")
        ),
    )
    return ok({"services": [_service(s, mv) for s in reply.services]})


UPDATE_253 = compile_schema(
    {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["enabled", "disabled"]},
            "disabled_reason": {"type": "string", "minLength": 1, "maxLength": 255},
            "forced_down": {"type": "boolean"},
        },
    }
)
LEGACY_SCHEMA = compile_schema(
    {
        "type": "object",
        "required": ["host", "binary"],
        "additionalProperties": False,
        "properties": {
            "host": {"type": "string", "minLength": 1, "maxLength": 255},
            "binary": {"type": "string", "minLength": 1, "maxLength": 255},
            "disabled_reason": {"type": "string", "minLength": 1, "maxLength": 255},
            "forced_down": {"type": "boolean"},
        },
    }
)
_LEGACY_ACTIONS = ("enable", "disable", "disable-log-reason", "force-down")


async def _update(request: Request, req: fleet_pb2.UpdateServiceRequest) -> fleet_pb2.Service:
    reply = await call(gateway_of(request).conductor.fleet.UpdateService, req)
    service: fleet_pb2.Service = reply.service
    return service


@documented(body=UPDATE_253, tag="compute", policy=ADMIN)
async def update_service(request: Request) -> Response:
    """Enable, disable (with a reason) or force down a service (admin).

    From 2.53 the path names the service's UUID; before, it names a legacy action
    (enable, disable, disable-log-reason, force-down) and the body the host and binary.
    """
    context(request).require_admin("os_compute_api:os-services:update")
    mv = microversion(request)
    target = request.path_params["service_id"]
    body = await json_body(request)
    if not mv.at_least("2.53"):
        return await _legacy_update(request, mv, target, body)
    checked_body(UPDATE_253, body)
    if "disabled_reason" in body and body.get("status") != "disabled":
        raise BadRequest("Specifying a disabled reason is only allowed when status is disabled.")
    req = fleet_pb2.UpdateServiceRequest(request_id=request_id(request), id=target)
    if "status" in body:
        req.enabled = body["status"] == "enabled"
    if "disabled_reason" in body:
        req.disabled_reason = body["disabled_reason"]
    if "forced_down" in body:
        req.forced_down = body["forced_down"]
    return ok({"service": _service(await _update(request, req), mv)})


async def _legacy_update(request: Request, mv: Microversion, action: str, body: Any) -> Response:
    if action not in _LEGACY_ACTIONS or (action == "force-down" and not mv.at_least("2.11")):
        raise NotFound("Unknown action")
    checked_body(LEGACY_SCHEMA, body)
    found = await call(
        gateway_of(request).conductor.fleet.ListServices,
        fleet_pb2.ListServicesRequest(binary=loom_binary(body["binary"]), host=body["host"]),
    )
    if not found.services:
        raise NotFound(f"Service {body['binary']} on host {body['host']} could not be found.")
    req = fleet_pb2.UpdateServiceRequest(
        request_id=request_id(request), id=str(found.services[0].id)
    )
    if action == "enable":
        req.enabled = True
    elif action in ("disable", "disable-log-reason"):
        req.enabled = False
        if action == "disable-log-reason":
            if "disabled_reason" not in body:
                raise BadRequest("Missing disabled reason field")
            req.disabled_reason = body["disabled_reason"]
    else:
        if "forced_down" not in body:
            raise BadRequest("Missing forced_down field")
        req.forced_down = body["forced_down"]
    svc = await _update(request, req)
    out: dict[str, Any] = {"host": svc.host, "binary": api_binary(svc.binary)}
    if action == "force-down":
        out["forced_down"] = svc.forced_down
    else:
        out["status"] = "enabled" if svc.enabled else "disabled"
    if action == "disable-log-reason":
        out["disabled_reason"] = svc.disabled_reason
    return ok({"service": out})


@documented(tag="compute", policy=ADMIN)
async def delete_service(request: Request) -> Response:
    """Remove a service record (admin)."""
    context(request).require_admin("os_compute_api:os-services:delete")
    await call(
        gateway_of(request).conductor.fleet.DeleteService,
        fleet_pb2.DeleteServiceRequest(
            request_id=request_id(request), id=request.path_params["service_id"]
        ),
    )
    return empty(204)


# ------------------------------------------------------------------ hypervisors

HYPERVISOR_QUERY = Query(
    QueryParam("hypervisor_hostname_pattern"),
    QueryParam("with_servers", "boolean"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
)


def _hypervisor(
    h: fleet_pb2.Hypervisor, mv: Microversion, detailed: bool, servers: bool
) -> dict[str, Any]:
    uuids = mv.at_least("2.53")
    body: dict[str, Any] = {
        "id": h.uuid if uuids else h.id,
        "hypervisor_hostname": h.hypervisor_hostname,
        "state": "up" if h.up else "down",
        "status": "enabled" if h.enabled else "disabled",
    }
    if detailed:
        body.update(
            {
                "hypervisor_type": h.hypervisor_type,
                "hypervisor_version": h.hypervisor_version,
                "host_ip": h.host_ip,
                "service": {
                    "host": h.service.host,
                    "id": h.service.uuid if uuids else h.service.id,
                    "disabled_reason": h.service.disabled_reason or None,
                },
            }
        )
        if not mv.at_least("2.88"):
            # 2.88 dropped the usage figures: placement is the source of truth for them.
            body.update(
                {
                    "vcpus": h.vcpus,
                    "vcpus_used": h.vcpus_used,
                    "memory_mb": h.memory_mb,
                    "memory_mb_used": h.memory_mb_used,
                    "free_ram_mb": h.memory_mb - h.memory_mb_used,
                    "local_gb": h.local_gb,
                    "local_gb_used": h.local_gb_used,
                    "free_disk_gb": h.local_gb - h.local_gb_used,
                    "disk_available_least": h.local_gb - h.local_gb_used,
                    "running_vms": h.running_vms,
                    "current_workload": 0,
                    "cpu_info": _cpu_info(h.cpu_info, mv),
                }
            )
        else:
            body["uptime"] = None
    if servers and h.servers:
        body["servers"] = [{"uuid": s.id, "name": s.name} for s in h.servers]
    return body


def _cpu_info(stored: str, mv: Microversion) -> str | dict[str, Any]:
    """The agent's CPU facts: a JSON text before 2.28, the object itself from 2.28."""
    text = stored or "{}"
    if not mv.at_least("2.28"):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _list_hypervisors(request: Request, detailed: bool) -> Response:
    context(request).require_admin("os_compute_api:os-hypervisors:list")
    mv = microversion(request)
    q = checked_query(request, HYPERVISOR_QUERY)
    if not mv.at_least("2.53") and ("with_servers" in q or "hypervisor_hostname_pattern" in q):
        raise BadRequest("These filters need microversion 2.53 or later.")
    paged = mv.at_least("2.33")
    limit = q.get("limit") if paged else None
    reply = await call(
        gateway_of(request).conductor.fleet.ListHypervisors,
        fleet_pb2.ListHypervisorsRequest(
            hostname_pattern=q.get("hypervisor_hostname_pattern", ""),
            with_servers=q.get("with_servers", False),
            limit=limit or 0,
            marker=q.get("marker", "") if paged else "",
        ),
    )
    with_servers = bool(q.get("with_servers"))
    body: dict[str, Any] = {
        "hypervisors": [_hypervisor(h, mv, detailed, with_servers) for h in reply.hypervisors]
    }
    if paged and reply.next_marker:
        body["hypervisors_links"] = next_link(
            request,
            "os-hypervisors/detail" if detailed else "os-hypervisors",
            reply.next_marker,
            limit,
        )
    return ok(body)


@documented(query=HYPERVISOR_QUERY, tag="compute", policy=ADMIN)
async def list_hypervisors(request: Request) -> Response:
    """Hypervisors (admin)."""
    return await _list_hypervisors(request, detailed=False)


@documented(query=HYPERVISOR_QUERY, tag="compute", policy=ADMIN)
async def list_hypervisors_detail(request: Request) -> Response:
    """Hypervisors with capacity and usage (admin)."""
    return await _list_hypervisors(request, detailed=True)


SHOW_HYPERVISOR_QUERY = Query(QueryParam("with_servers", "boolean"))


@documented(query=SHOW_HYPERVISOR_QUERY, tag="compute", policy=ADMIN)
async def show_hypervisor(request: Request) -> Response:
    """One hypervisor (admin)."""
    context(request).require_admin("os_compute_api:os-hypervisors:show")
    mv = microversion(request)
    q = checked_query(request, SHOW_HYPERVISOR_QUERY)
    try:
        reply = await call(
            gateway_of(request).conductor.fleet.GetHypervisor,
            fleet_pb2.GetHypervisorRequest(
                id=request.path_params["hypervisor_id"], with_servers=q.get("with_servers", False)
            ),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound(
                f"Hypervisor with ID {request.path_params['hypervisor_id']} could not be found."
            ) from exc
        raise
    body = _hypervisor(reply.hypervisor, mv, True, bool(q.get("with_servers")))
    if mv.at_least("2.88") and reply.hypervisor.up:
        body["uptime"] = await _uptime_text(request, reply.hypervisor.service.host)
    return ok({"hypervisor": body})


# The routes below were dropped from the API in later microversions: their data moved into
# the list's query parameters (2.53) or out of the compute API (2.88).
_GONE = "The resource could not be found."


def _until(request: Request, last: str) -> Microversion:
    mv = microversion(request)
    if mv > Microversion.parse(last):
        raise NotFound(_GONE)
    return mv


@documented(tag="compute", policy=ADMIN)
async def hypervisor_statistics(request: Request) -> Response:
    """Totals over every hypervisor (admin; up to 2.87)."""
    context(request).require_admin("os_compute_api:os-hypervisors:statistics")
    _until(request, "2.87")
    reply = await call(
        gateway_of(request).conductor.fleet.ListHypervisors, fleet_pb2.ListHypervisorsRequest()
    )
    hs = list(reply.hypervisors)
    vcpus = sum(h.vcpus for h in hs)
    memory = sum(h.memory_mb for h in hs)
    disk = sum(h.local_gb for h in hs)
    memory_used = sum(h.memory_mb_used for h in hs)
    disk_used = sum(h.local_gb_used for h in hs)
    return ok(
        {
            "hypervisor_statistics": {
                "count": len(hs),
                "vcpus": vcpus,
                "vcpus_used": sum(h.vcpus_used for h in hs),
                "memory_mb": memory,
                "memory_mb_used": memory_used,
                "free_ram_mb": memory - memory_used,
                "local_gb": disk,
                "local_gb_used": disk_used,
                "free_disk_gb": disk - disk_used,
                "disk_available_least": disk - disk_used,
                "running_vms": sum(h.running_vms for h in hs),
                "current_workload": 0,
            }
        }
    )


def _check_hypervisor_id(mv: Microversion, ident: str) -> None:
    """A UUID from 2.53, an integer before (anything else names no hypervisor)."""
    if mv.at_least("2.53"):
        try:
            uuid.UUID(ident)
        except ValueError:
            raise BadRequest(f"Invalid uuid {shorten(ident)}") from None
    elif not (ident.isascii() and ident.isdigit()):
        raise NotFound(f"Hypervisor with ID '{shorten(ident)}' could not be found.")


@documented(tag="compute", policy=ADMIN)
async def hypervisor_uptime(request: Request) -> Response:
    """A hypervisor's uptime (admin; up to 2.87), as `uptime` prints it on its host."""
    context(request).require_admin("os_compute_api:os-hypervisors:uptime")
    mv = _until(request, "2.87")
    ident = request.path_params["hypervisor_id"]
    _check_hypervisor_id(mv, ident)
    try:
        reply = await call(
            gateway_of(request).conductor.fleet.GetHypervisor,
            fleet_pb2.GetHypervisorRequest(id=ident),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound(f"Hypervisor with ID '{shorten(ident)}' could not be found.") from exc
        raise
    h = reply.hypervisor
    if not h.up:
        # Nova's ComputeServiceUnavailable: its agent cannot be asked.
        raise BadRequest(f"Compute service of {h.service.host} is unavailable at this time.")
    text = await _uptime_text(request, h.service.host)
    if text is None:
        raise BadRequest(f"Compute service of {h.service.host} is unavailable at this time.")
    body = _hypervisor(h, mv, False, False)
    body["uptime"] = text
    return ok({"hypervisor": body})


async def _uptime_text(request: Request, host: str) -> str | None:
    """The host's `uptime` line from its agent; None when the agent cannot answer."""
    try:
        reply: diagnostics_pb2.GetHostUptimeResponse = await call(
            gateway_of(request).conductor.diagnostics.GetHostUptime,
            diagnostics_pb2.GetHostUptimeRequest(host=host),
        )
    except ApiError as exc:
        if exc.status in (404, 409, 503, 504):
            return None
        raise
    u = reply.uptime
    return uptime_text(
        datetime.now(UTC), u.uptime_seconds, u.users, (u.load_1, u.load_5, u.load_15)
    )


async def _matching(request: Request, with_servers: bool) -> list[dict[str, Any]]:
    mv = _until(request, "2.52")
    pattern = request.path_params["pattern"]
    reply = await call(
        gateway_of(request).conductor.fleet.ListHypervisors,
        fleet_pb2.ListHypervisorsRequest(hostname_pattern=pattern, with_servers=with_servers),
    )
    if not reply.hypervisors:
        raise NotFound(f"No hypervisor matching '{shorten(pattern)}' could be found.")
    return [_hypervisor(h, mv, False, with_servers) for h in reply.hypervisors]


@documented(tag="compute", policy=ADMIN)
async def search_hypervisors(request: Request) -> Response:
    """Hypervisors whose name contains a pattern (admin; up to 2.52, then a list filter)."""
    context(request).require_admin("os_compute_api:os-hypervisors:search")
    return ok({"hypervisors": await _matching(request, with_servers=False)})


@documented(tag="compute", policy=ADMIN)
async def hypervisor_servers(request: Request) -> Response:
    """Matching hypervisors with their servers (admin; up to 2.52, then a list filter)."""
    context(request).require_admin("os_compute_api:os-hypervisors:servers")
    return ok({"hypervisors": await _matching(request, with_servers=True)})


def routes() -> list[BaseRoute]:
    return [
        Route("/compute/v2.1/os-availability-zone", list_zones, methods=["GET"]),
        Route("/compute/v2.1/os-availability-zone/detail", list_zones_detail, methods=["GET"]),
        Route("/compute/v2.1/os-services", list_services, methods=["GET"]),
        Route("/compute/v2.1/os-services/{service_id}", update_service, methods=["PUT"]),
        Route("/compute/v2.1/os-services/{service_id}", delete_service, methods=["DELETE"]),
        Route("/compute/v2.1/os-hypervisors", list_hypervisors, methods=["GET"]),
        Route("/compute/v2.1/os-hypervisors/detail", list_hypervisors_detail, methods=["GET"]),
        Route("/compute/v2.1/os-hypervisors/statistics", hypervisor_statistics, methods=["GET"]),
        Route(
            "/compute/v2.1/os-hypervisors/{hypervisor_id}/uptime",
            hypervisor_uptime,
            methods=["GET"],
        ),
        Route("/compute/v2.1/os-hypervisors/{pattern}/search", search_hypervisors, methods=["GET"]),
        Route(
            "/compute/v2.1/os-hypervisors/{pattern}/servers", hypervisor_servers, methods=["GET"]
        ),
        Route("/compute/v2.1/os-hypervisors/{hypervisor_id}", show_hypervisor, methods=["GET"]),
    ]
