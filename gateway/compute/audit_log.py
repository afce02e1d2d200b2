"""os-instance_usage_audit_log (admin): Nova's shape for the servers that ran on each
compute host during an audit period.

Nova's numbers come from a periodic task each compute host runs once per period. Loom runs
no such task: the numbers are counted when asked, from the server records (deleted ones
included), so every compute host counts as done and none as not run, and a host's
`instances` is the number of servers that ran on it at some time in the period. The period
is Nova's default (`instance_usage_audit_period = month`): the last whole calendar month
before the given time (or now).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from google.protobuf.timestamp_pb2 import Timestamp
from loom.conductor.v1 import fleet_pb2, servers_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.errors import BadRequest
from gateway.routing import ADMIN, documented
from gateway.state import gateway_of
from gateway.validation.schema import shorten

_PAGE = 1000
# A bound on the servers counted per request (50 pages): past it the answer would be slow.
_MAX_PAGES = 50
_MESSAGE = (
    "Counted on request from Loom's server records: {count} server(s) ran on this host "
    "during the period. Loom runs no periodic audit task."
)


def last_completed_month(before: datetime) -> tuple[datetime, datetime]:
    """The calendar month that ended last at or before `before` (naive UTC)."""
    end = before.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    begin = (
        end.replace(year=end.year - 1, month=12)
        if end.month == 1
        else end.replace(month=end.month - 1)
    )
    return begin, end


def _parse_before(raw: str) -> datetime:
    text = unquote(raw)
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        raise BadRequest(f"Invalid timestamp for date {shorten(text)}") from None


def _stamp(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.replace(tzinfo=UTC))
    return ts


async def _servers_per_host(request: Request, begin: datetime, end: datetime) -> Counter[str]:
    counts: Counter[str] = Counter()
    marker = ""
    for _ in range(_MAX_PAGES):
        reply = await call(
            gateway_of(request).conductor.servers.ListServers,
            servers_pb2.ListServersRequest(
                include_deleted=True,
                launched_before=_stamp(end),
                running_after=_stamp(begin),
                sort_key="id",
                sort_dir="asc",
                limit=_PAGE,
                marker=marker,
            ),
        )
        counts.update(s.host for s in reply.servers if s.host)
        marker = reply.next_marker
        if not marker:
            break
    return counts


async def _audit(request: Request, before: datetime) -> dict[str, Any]:
    begin, end = last_completed_month(before)
    services = await call(
        gateway_of(request).conductor.fleet.ListServices,
        fleet_pb2.ListServicesRequest(binary="loom-compute"),
    )
    # Disabled hosts too: they may have run servers in the period.
    hosts = sorted({s.host for s in services.services})
    counts = await _servers_per_host(request, begin, end)
    log = {
        host: {
            "errors": 0,
            "instances": counts.get(host, 0),
            "message": _MESSAGE.format(count=counts.get(host, 0)),
            "state": "DONE",
        }
        for host in hosts
    }
    return {
        "hosts_not_run": [],
        "log": log,
        "num_hosts": len(hosts),
        "num_hosts_done": len(hosts),
        "num_hosts_not_run": 0,
        "num_hosts_running": 0,
        "overall_status": "ALL hosts done. 0 errors.",
        "period_beginning": str(begin),
        "period_ending": str(end),
        "total_errors": 0,
        "total_instances": sum(counts.get(h, 0) for h in hosts),
    }


@documented(tag="compute", policy=ADMIN)
async def list_audit_logs(request: Request) -> Response:
    """The last whole month's servers per compute host (admin)."""
    context(request).require_admin("os_compute_api:os-instance-usage-audit-log:list")
    now = datetime.now(UTC).replace(tzinfo=None)
    return ok({"instance_usage_audit_logs": await _audit(request, now)})


@documented(tag="compute", policy=ADMIN)
async def show_audit_log(request: Request) -> Response:
    """The servers per compute host of the last whole month before a time (admin)."""
    context(request).require_admin("os_compute_api:os-instance-usage-audit-log:show")
    before = _parse_before(request.path_params["before_timestamp"])
    return ok({"instance_usage_audit_log": await _audit(request, before)})


def routes() -> list[BaseRoute]:
    p = "/compute/v2.1/os-instance_usage_audit_log"
    return [
        Route(p, list_audit_logs, methods=["GET"]),
        Route(p + "/{before_timestamp}", show_audit_log, methods=["GET"]),
    ]
