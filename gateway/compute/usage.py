"""Simple tenant usage: each project's server hours over a period, weighted by flavor.

The conductor selects the servers that ran during the period (launched before its end,
not terminated before its start, deleted ones included); the figures are computed here
from their launch and termination times and their flavor snapshot.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from loom.conductor.v1 import servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, next_link, ok
from gateway.conductor import call
from gateway.errors import BadRequest, Forbidden
from gateway.microversion import Microversion
from gateway.routing import ADMIN, READER_OF_PROJECT, checked_query, documented
from gateway.state import gateway_of, microversion
from gateway.validation import Query, QueryParam
from gateway.validation.schema import shorten
from gateway.views import servers as views

COLLECTION = "os-simple-tenant-usage"
MAX_LIMIT = 1000
# The forms the API has always accepted for start and end (no zone: UTC).
_FORMATS = ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M:%S.%f")

_PERIOD = (QueryParam("start", multi=True), QueryParam("end", multi=True))
_PAGING = (QueryParam("limit", "nonneg_integer"), QueryParam("marker"))
INDEX_QUERY = Query(*_PERIOD, QueryParam("detailed", multi=True))
INDEX_QUERY_240 = Query(*_PERIOD, QueryParam("detailed", multi=True), *_PAGING)
SHOW_QUERY = Query(*_PERIOD)
SHOW_QUERY_240 = Query(*_PERIOD, *_PAGING)


def _parse_time(values: list[str] | None) -> datetime:
    if not values or not values[0]:
        # Each missing bound is the time it is read: without both, the period is the
        # instant between the two readings, as the API has always had it.
        return datetime.now(UTC)
    for fmt in _FORMATS:
        try:
            return datetime.strptime(values[0], fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise BadRequest(f"Invalid datetime string: {shorten(values[0])}")


def _naive_iso(value: datetime) -> str:
    """As the API prints usage times: microseconds, no zone (UTC)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _stamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def _when(ts: Timestamp) -> datetime | None:
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def _period(q: dict[str, Any]) -> tuple[datetime, datetime]:
    start = _parse_time(q.get("start"))
    end = _parse_time(q.get("end"))
    if not start < end:
        raise BadRequest("Invalid start time. The start time cannot occur after the end time.")
    # A period reaching into the future is counted up to now.
    return start, min(end, datetime.now(UTC))


def _server_usage(s: servers_pb2.Server, start: datetime, stop: datetime) -> dict[str, Any]:
    launched = _when(s.launched_at) or start
    terminated = _when(s.terminated_at)
    begin = max(launched, start)
    end = min(stop, terminated) if terminated else stop
    hours = max((end - begin).total_seconds(), 0.0) / 3600.0
    ran_until = terminated or datetime.now(UTC)
    return {
        "instance_id": s.id,
        "name": s.name,
        "tenant_id": s.project_id,
        "flavor": s.flavor.name,
        "hours": hours,
        "memory_mb": s.flavor.memory_mb,
        "local_gb": s.flavor.root_gb + s.flavor.ephemeral_gb,
        "vcpus": s.flavor.vcpus,
        "started_at": _naive_iso(launched),
        "ended_at": _naive_iso(terminated) if terminated else None,
        "state": "terminated" if terminated else views.VM_STATES.get(s.vm_state, "error"),
        "uptime": int((ran_until - launched).total_seconds()),
    }


def _summaries(
    usages: list[dict[str, Any]], start: datetime, stop: datetime, detailed: bool
) -> list[dict[str, Any]]:
    """One summary per project, in the order the projects first appear."""
    out: dict[str, dict[str, Any]] = {}
    for u in usages:
        summary = out.get(u["tenant_id"])
        if summary is None:
            summary = {
                "tenant_id": u["tenant_id"],
                "total_local_gb_usage": 0.0,
                "total_vcpus_usage": 0.0,
                "total_memory_mb_usage": 0.0,
                "total_hours": 0.0,
                "start": _naive_iso(start),
                "stop": _naive_iso(stop),
            }
            if detailed:
                summary["server_usages"] = []
            out[u["tenant_id"]] = summary
        summary["total_local_gb_usage"] += u["local_gb"] * u["hours"]
        summary["total_vcpus_usage"] += u["vcpus"] * u["hours"]
        summary["total_memory_mb_usage"] += u["memory_mb"] * u["hours"]
        summary["total_hours"] += u["hours"]
        if detailed:
            summary["server_usages"].append(u)
    return list(out.values())


async def _usages(
    request: Request, project_id: str, q: dict[str, Any], paged: bool
) -> tuple[list[dict[str, Any]], datetime, datetime, str, int]:
    start, stop = _period(q)
    limit = min(q.get("limit", MAX_LIMIT), MAX_LIMIT) if paged else MAX_LIMIT
    if limit == 0:
        return [], start, stop, "", 0
    reply = await call(
        gateway_of(request).conductor.servers.ListServers,
        servers_pb2.ListServersRequest(
            project_id=project_id,
            include_deleted=True,
            launched_before=_stamp(stop),
            running_after=_stamp(start),
            sort_key="id",
            sort_dir="asc",
            limit=limit,
            marker=q.get("marker", "") if paged else "",
        ),
    )
    usages = [_server_usage(s, start, stop) for s in reply.servers]
    return usages, start, stop, reply.next_marker if paged else "", limit


def _query(mv: Microversion, plain: Query, paged: Query) -> tuple[Query, bool]:
    return (paged, True) if mv.at_least("2.40") else (plain, False)


@documented(query=INDEX_QUERY_240, tag="compute", policy=ADMIN)
async def list_usages(request: Request) -> Response:
    """Usage of every project over a period (admin); `detailed=1` lists each server."""
    context(request).require_admin("os_compute_api:os-simple-tenant-usage:list")
    mv = microversion(request)
    query, paged = _query(mv, INDEX_QUERY, INDEX_QUERY_240)
    # Unknown parameters are ignored before 2.75 and refused from it.
    q = checked_query(request, query, ignore_unknown=not mv.at_least("2.75"))
    detailed = (q.get("detailed") or ["0"])[0] == "1"
    usages, start, stop, marker, limit = await _usages(request, "", q, paged)
    body: dict[str, Any] = {"tenant_usages": _summaries(usages, start, stop, detailed)}
    if marker:
        body["tenant_usages_links"] = next_link(request, COLLECTION, marker, limit)
    return ok(body)


@documented(query=SHOW_QUERY_240, tag="compute", policy=READER_OF_PROJECT)
async def show_usage(request: Request) -> Response:
    """One project's usage over a period, server by server (its members or an admin)."""
    ctx = context(request)
    ctx.require_read("os_compute_api:os-simple-tenant-usage:show")
    project_id = request.path_params["project_id"]
    if project_id != ctx.project_id and not ctx.is_admin:
        raise Forbidden(
            "Policy doesn't allow os_compute_api:os-simple-tenant-usage:show to be performed."
        )
    mv = microversion(request)
    query, paged = _query(mv, SHOW_QUERY, SHOW_QUERY_240)
    q = checked_query(request, query, ignore_unknown=not mv.at_least("2.75"))
    usages, start, stop, marker, limit = await _usages(request, project_id, q, paged)
    found = _summaries(usages, start, stop, detailed=True)
    body: dict[str, Any] = {"tenant_usage": found[0] if found else {}}
    if marker:
        body["tenant_usage_links"] = next_link(request, f"{COLLECTION}/{project_id}", marker, limit)
    return ok(body)


def routes() -> list[BaseRoute]:
    return [
        Route(f"/compute/v2.1/{COLLECTION}", list_usages, methods=["GET"]),
        Route(f"/compute/v2.1/{COLLECTION}/{{project_id}}", show_usage, methods=["GET"]),
    ]
