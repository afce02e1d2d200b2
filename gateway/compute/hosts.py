"""os-hosts, the deprecated host API (up to 2.42; 404 from 2.43, as Nova): the hosts of the
fleet's services, a compute host's resources, enabling or disabling a host (its compute
service, as os-services does), and the power and maintenance actions Loom refuses as
Nova's libvirt driver does (501)."""

from __future__ import annotations

from typing import Any

from loom.conductor.v1 import fleet_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import ApiError, NotFound
from gateway.routing import ADMIN, checked_body, checked_query, documented
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, compile_schema
from gateway.validation.schema import shorten

_GONE = "The resource could not be found."
_NOT_SUPPORTED = "The requested functionality is not supported."
_SWITCH = {
    "type": "string",
    "enum": ["enable", "disable", "Enable", "Disable", "ENABLE", "DISABLE"],
}
UPDATE = compile_schema(
    {
        "type": "object",
        "properties": {"status": _SWITCH, "maintenance_mode": _SWITCH},
        "anyOf": [{"required": ["status"]}, {"required": ["maintenance_mode"]}],
        "additionalProperties": False,
    }
)
LIST_QUERY = Query(QueryParam("zone"))


def _until_2_42(request: Request) -> None:
    if microversion(request).at_least("2.43"):
        raise NotFound(_GONE)


def _topic(binary: str) -> str:
    """Nova's service topic: the binary without its prefix (compute, conductor, scheduler)."""
    return binary.split("-", 1)[1] if "-" in binary else binary


@documented(query=LIST_QUERY, tag="compute", policy=ADMIN)
async def list_hosts(request: Request) -> Response:
    """The hosts of the enabled services, optionally of one zone (admin; up to 2.42)."""
    _until_2_42(request)
    context(request).require_admin("os_compute_api:os-hosts:list")
    q = checked_query(request, LIST_QUERY, ignore_unknown=True)
    zone = q.get("zone", "")
    reply = await call(
        gateway_of(request).conductor.fleet.ListServices, fleet_pb2.ListServicesRequest()
    )
    hosts = [
        {"host_name": s.host, "service": _topic(s.binary), "zone": s.zone}
        for s in reply.services
        if s.enabled and (not zone or s.zone == zone)
    ]
    return ok({"hosts": hosts})


async def _compute_host(request: Request, host: str, with_servers: bool) -> fleet_pb2.Hypervisor:
    """The hypervisor of a compute host, looked up by its name only (404 otherwise)."""
    missing = NotFound(f"Compute host {shorten(host)} could not be found.")
    try:
        reply = await call(
            gateway_of(request).conductor.fleet.GetHypervisor,
            fleet_pb2.GetHypervisorRequest(id=host, with_servers=with_servers),
        )
    except ApiError as exc:
        if exc.status in (400, 404):
            raise missing from exc
        raise
    h: fleet_pb2.Hypervisor = reply.hypervisor
    if host not in (h.service.host, h.hypervisor_hostname):
        raise missing  # an id or a UUID found it: os-hosts takes names only
    return h


def _resource(host: str, project: str, cpu: int, memory_mb: int, disk_gb: int) -> dict[str, Any]:
    return {
        "resource": {
            "host": host,
            "project": project,
            "cpu": cpu,
            "memory_mb": memory_mb,
            "disk_gb": disk_gb,
        }
    }


@documented(tag="compute", policy=ADMIN)
async def show_host(request: Request) -> Response:
    """A compute host's resources: total, used now (claims), used at most by its servers'
    flavors, and per project (admin; up to 2.42)."""
    _until_2_42(request)
    context(request).require_admin("os_compute_api:os-hosts:show")
    name = request.path_params["host_name"]
    h = await _compute_host(request, name, False)
    placed = await call(
        gateway_of(request).conductor.fleet.ListHostInstances,
        fleet_pb2.ListHostInstancesRequest(host=h.service.host),
    )
    used_max = [0, 0, 0]
    per_project: dict[str, list[int]] = {}
    for inst in placed.instances:
        spec = inst.spec
        figures = (spec.vcpus, spec.memory_mb, spec.root_gb + spec.ephemeral_gb)
        sums = per_project.setdefault(spec.project_id, [0, 0, 0])
        for i, value in enumerate(figures):
            used_max[i] += value
            sums[i] += value
    resources = [
        _resource(name, "(total)", h.vcpus, h.memory_mb, h.local_gb),
        _resource(name, "(used_now)", h.vcpus_used, h.memory_mb_used, h.local_gb_used),
        _resource(name, "(used_max)", *used_max),
    ]
    resources += [_resource(name, project, *sums) for project, sums in per_project.items()]
    return ok({"host": resources})


@documented(body=UPDATE, tag="compute", policy=ADMIN)
async def update_host(request: Request) -> Response:
    """Enable or disable a compute host (its compute service, as os-services does);
    maintenance mode is refused (501), as Nova's libvirt driver does (admin; up to 2.42)."""
    _until_2_42(request)
    context(request).require_admin("os_compute_api:os-hosts:update")
    body = await json_body(request)
    checked_body(UPDATE, body)
    name = request.path_params["host_name"]
    h = await _compute_host(request, name, False)
    # Refused before any change, so a request that also sets `status` changes nothing.
    if "maintenance_mode" in body:
        raise ApiError(501, _NOT_SUPPORTED)
    enable = body["status"].lower() == "enable"
    req = fleet_pb2.UpdateServiceRequest(
        request_id=request_id(request), id=str(h.service.id), enabled=enable
    )
    if not enable:
        req.disabled_reason = "Disabled through os-hosts"
    reply = await call(gateway_of(request).conductor.fleet.UpdateService, req)
    status = "enabled" if reply.service.enabled else "disabled"
    return ok({"host": {"host": name, "status": status}})


async def _power_action(request: Request, action: str) -> Response:
    _until_2_42(request)
    context(request).require_admin(f"os_compute_api:os-hosts:{action}")
    await _compute_host(request, request.path_params["host_name"], False)
    # Loom's agents do not power their own machines on, off or around.
    raise ApiError(501, _NOT_SUPPORTED)


@documented(tag="compute", policy=ADMIN)
async def reboot_host(request: Request) -> Response:
    """Refused (501): Loom does not reboot its hosts (admin; up to 2.42)."""
    return await _power_action(request, "reboot")


@documented(tag="compute", policy=ADMIN)
async def shutdown_host(request: Request) -> Response:
    """Refused (501): Loom does not shut its hosts down (admin; up to 2.42)."""
    return await _power_action(request, "shutdown")


@documented(tag="compute", policy=ADMIN)
async def startup_host(request: Request) -> Response:
    """Refused (501): Loom does not start its hosts up (admin; up to 2.42)."""
    return await _power_action(request, "start")


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/os-hosts"
    return [
        Route(p, list_hosts, methods=["GET"]),
        Route(p + "/{host_name}", show_host, methods=["GET"]),
        Route(p + "/{host_name}", update_host, methods=["PUT"]),
        Route(p + "/{host_name}/reboot", reboot_host, methods=["GET"]),
        Route(p + "/{host_name}/shutdown", shutdown_host, methods=["GET"]),
        Route(p + "/{host_name}/startup", startup_host, methods=["GET"]),
    ]
