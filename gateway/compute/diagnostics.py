"""Server diagnostics (`GET /servers/{id}/diagnostics`, admin): the standard body from 2.48,
the libvirt driver's flat legacy body before, from the counters the server's agent reads
from libvirt now."""

from __future__ import annotations

from typing import Any

from loom.compute.v1 import agent_bus_pb2, compute_pb2
from loom.conductor.v1 import diagnostics_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.conductor import call
from gateway.routing import ADMIN, documented
from gateway.state import gateway_of, microversion

# Nova's power state names, as the 2.48 body's `state` gives them.
_STATE = {
    agent_bus_pb2.POWER_STATE_RUNNING: "running",
    agent_bus_pb2.POWER_STATE_PAUSED: "paused",
    agent_bus_pb2.POWER_STATE_SHUTDOWN: "shutdown",
    agent_bus_pb2.POWER_STATE_CRASHED: "crashed",
    agent_bus_pb2.POWER_STATE_SUSPENDED: "suspended",
}


def _opt(msg: Any, field: str) -> int | None:
    return int(getattr(msg, field)) if msg.HasField(field) else None


def standard_body(reply: diagnostics_pb2.GetServerDiagnosticsResponse) -> dict[str, Any]:
    """Nova's 2.48 format; a counter the hypervisor does not keep is null (rates always)."""
    v = reply.hypervisor_view
    return {
        "state": _STATE.get(v.power_state, "pending"),
        "driver": v.driver or "libvirt",
        "hypervisor": v.hypervisor.lower() or None,
        "hypervisor_os": "linux",
        "uptime": reply.uptime_seconds,
        "config_drive": reply.config_drive,
        "num_cpus": v.vcpus,
        "num_nics": len(v.nics),
        "num_disks": len(v.disks),
        "memory_details": {"maximum": v.max_memory_mb or v.memory_mb, "used": v.memory_mb},
        "cpu_details": [
            {"id": i, "time": t, "utilisation": None} for i, t in enumerate(v.vcpu_times_ns)
        ],
        "nic_details": [_nic(n) for n in v.nics],
        "disk_details": [_disk(d) for d in v.disks],
    }


def _nic(n: compute_pb2.NicCounters) -> dict[str, Any]:
    return {
        "mac_address": n.mac_address or None,
        "rx_octets": _opt(n, "rx_bytes"),
        "rx_errors": _opt(n, "rx_errors"),
        "rx_drop": _opt(n, "rx_drop"),
        "rx_packets": _opt(n, "rx_packets"),
        "rx_rate": None,
        "tx_octets": _opt(n, "tx_bytes"),
        "tx_errors": _opt(n, "tx_errors"),
        "tx_drop": _opt(n, "tx_drop"),
        "tx_packets": _opt(n, "tx_packets"),
        "tx_rate": None,
    }


def _disk(d: compute_pb2.DiskCounters) -> dict[str, Any]:
    return {
        "read_bytes": _opt(d, "read_bytes"),
        "read_requests": _opt(d, "read_requests"),
        "write_bytes": _opt(d, "write_bytes"),
        "write_requests": _opt(d, "write_requests"),
        "errors_count": _opt(d, "errors"),
    }


def legacy_body(reply: diagnostics_pb2.GetServerDiagnosticsResponse) -> dict[str, Any]:
    """Before 2.48 each driver had its own flat body; this is the libvirt driver's (memory
    in KiB, counters named after the guest's devices), without counters libvirt lacks."""
    v = reply.hypervisor_view
    body: dict[str, Any] = {f"cpu{i}_time": t for i, t in enumerate(v.vcpu_times_ns)}
    body["memory"] = (v.max_memory_mb or v.memory_mb) * 1024
    for d in v.disks:
        for suffix, field in (
            ("read", "read_bytes"),
            ("read_req", "read_requests"),
            ("write", "write_bytes"),
            ("write_req", "write_requests"),
            ("errors", "errors"),
        ):
            value = _opt(d, field)
            if value is not None:
                body[f"{d.device}_{suffix}"] = value
    for n in v.nics:
        for suffix, field in (
            ("rx", "rx_bytes"),
            ("rx_packets", "rx_packets"),
            ("rx_errors", "rx_errors"),
            ("rx_drop", "rx_drop"),
            ("tx", "tx_bytes"),
            ("tx_packets", "tx_packets"),
            ("tx_errors", "tx_errors"),
            ("tx_drop", "tx_drop"),
        ):
            value = _opt(n, field)
            if value is not None and n.device:
                body[f"{n.device}_{suffix}"] = value
    return body


@documented(tag="compute", policy=ADMIN)
async def show_diagnostics(request: Request) -> Response:
    """A server's hypervisor counters (admin); 409 while it is not on a host."""
    context(request).require_admin("os_compute_api:os-server-diagnostics")
    reply: diagnostics_pb2.GetServerDiagnosticsResponse = await call(
        gateway_of(request).conductor.diagnostics.GetServerDiagnostics,
        diagnostics_pb2.GetServerDiagnosticsRequest(id=request.path_params["server_id"]),
    )
    if microversion(request).at_least("2.48"):
        return ok(standard_body(reply))
    return ok(legacy_body(reply))


def routes() -> list[BaseRoute]:
    return [
        Route("/compute/v2.1/servers/{server_id}/diagnostics", show_diagnostics, methods=["GET"])
    ]
