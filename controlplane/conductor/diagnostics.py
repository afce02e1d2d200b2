"""loom.conductor.v1.DiagnosticsService: a server's diagnostics and a host's uptime, read
from the agent that runs them (its ComputeService, found through the scheduler's host
list, with a deadline on every call), as console output is."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TypeAlias

import grpc
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from loom.conductor.v1 import diagnostics_pb2, diagnostics_pb2_grpc

from controlplane.conductor.context import Conductor
from controlplane.conductor.servers.query import load_instance
from controlplane.conductor.states import TaskState
from controlplane.db.dialect import as_utc
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound
from controlplane.runtime.grpcserver import insecure_or_secure_channel
from controlplane.runtime.rpc import grpc_errors

Ctx: TypeAlias = grpc.aio.ServicerContext

AGENT_DEADLINE_S = 10.0


class DiagnosticsServicer(diagnostics_pb2_grpc.DiagnosticsServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    async def _endpoint(self, host: str) -> str:
        try:
            endpoint = (await self._c.scheduler.get_host(host)).compute_endpoint
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"Host {host} could not be found.") from exc
            raise
        if not endpoint:
            raise Conflict(f"Host {host} has not reported a compute endpoint yet.")
        return endpoint

    @grpc_errors
    async def GetServerDiagnostics(
        self, request: diagnostics_pb2.GetServerDiagnosticsRequest, context: Ctx
    ) -> diagnostics_pb2.GetServerDiagnosticsResponse:
        async with self._c.sessions() as session:
            row = await load_instance(session, request.id, request.project_id)
        if not row.host or row.task_state == TaskState.DELETING.value:
            raise Conflict(f"Instance {row.uuid} is not on a host.")
        endpoint = await self._endpoint(row.host)
        async with insecure_or_secure_channel(endpoint, self._c.cfg.tls) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)
            try:
                view = await stub.GetInstanceDiagnostics(
                    compute_pb2.GetInstanceDiagnosticsRequest(instance_id=row.uuid),
                    timeout=AGENT_DEADLINE_S,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise Conflict(f"Instance {row.uuid} is not ready.") from exc
                raise
        uptime = 0
        if row.launched_at is not None:
            uptime = max(0, int((datetime.now(UTC) - as_utc(row.launched_at)).total_seconds()))
        return diagnostics_pb2.GetServerDiagnosticsResponse(
            hypervisor_view=view,
            uptime_seconds=uptime,
            config_drive=row.config_drive not in ("", "false", "False"),
            host=row.host,
        )

    @grpc_errors
    async def GetHostUptime(
        self, request: diagnostics_pb2.GetHostUptimeRequest, context: Ctx
    ) -> diagnostics_pb2.GetHostUptimeResponse:
        if not request.host:
            raise InvalidArgument("host is required")
        endpoint = await self._endpoint(request.host)
        async with insecure_or_secure_channel(endpoint, self._c.cfg.tls) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)
            try:
                up = await stub.GetHostUptime(
                    compute_pb2.GetHostUptimeRequest(host=request.host), timeout=AGENT_DEADLINE_S
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    raise NotFound(f"Host {request.host} is not served by its agent.") from exc
                raise
        return diagnostics_pb2.GetHostUptimeResponse(uptime=up)
