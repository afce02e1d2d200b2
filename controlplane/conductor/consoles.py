"""loom.conductor.v1.ConsolesService: console output and console tokens.

Console tokens are the conductor's: a random secret handed out once, stored only as its
SHA-256, bound to one instance and to the console server (host, port) the instance's agent
reported when the token was made, and valid for `gateway.console_token_ttl_s` seconds.
Deleting the instance deletes its tokens (in the delete's transaction, see
servers/actions.py); validation also refuses a token whose instance is deleted or being
deleted, so nothing depends on that delete alone.

The agent is asked directly over gRPC (its ComputeService, found through the scheduler's
host list), with a deadline on every call.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from loom.conductor.v1 import consoles_pb2, consoles_pb2_grpc
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor.context import Conductor
from controlplane.conductor.servers.query import load_instance
from controlplane.conductor.states import TaskState, VmState
from controlplane.db.dialect import as_utc
from controlplane.db.models import ConsoleAuthToken, Instance
from controlplane.runtime.errors import Conflict, InvalidArgument, NotFound
from controlplane.runtime.grpcserver import insecure_or_secure_channel
from controlplane.runtime.rpc import grpc_errors

log = logging.getLogger(__name__)

Ctx: TypeAlias = grpc.aio.ServicerContext

# Protocols and client types Loom's proxy serves; Nova's others are refused as unavailable.
SUPPORTED = {("vnc", "novnc")}
AGENT_DEADLINE_S = 10.0
# 32 random bytes: 256 bits, so guessing is hopeless and a plain hash is enough to store.
TOKEN_BYTES = 32
INVALID_TOKEN = "The token is invalid or has expired."


class ConsoleUnavailable(InvalidArgument):
    """The hypervisor offers no such console (Nova's ConsoleTypeUnavailable, a 400)."""


class ConsoleNotAvailable(NotFound):
    """The guest has no console to read (Nova's ConsoleNotAvailable, a 404)."""


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def is_expired(expires_at: datetime, now: datetime) -> bool:
    return as_utc(expires_at) <= now


@dataclass(frozen=True)
class ConsoleEndpoint:
    host: str
    port: int


def _ts(value: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(as_utc(value))
    return ts


class ConsolesServicer(consoles_pb2_grpc.ConsolesServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    async def _compute_endpoint(self, host: str) -> str:
        endpoint = (await self._c.scheduler.get_host(host)).compute_endpoint
        if not endpoint:
            raise Conflict(f"Host {host} has not reported a compute endpoint yet.")
        return endpoint

    async def _console_output(self, endpoint: str, instance_id: str, length: int) -> str:
        async with insecure_or_secure_channel(endpoint, self._c.cfg.tls) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)
            try:
                resp = await stub.GetConsoleOutput(
                    compute_pb2.GetConsoleOutputRequest(instance_id=instance_id, length=length),
                    timeout=AGENT_DEADLINE_S,
                )
            except grpc.aio.AioRpcError as exc:
                raise _agent_error(exc, instance_id) from exc
        return str(resp.output)

    async def _connect_info(
        self, endpoint: str, instance_id: str, protocol: str
    ) -> ConsoleEndpoint:
        async with insecure_or_secure_channel(endpoint, self._c.cfg.tls) as channel:
            stub = compute_pb2_grpc.ComputeServiceStub(channel)
            try:
                resp = await stub.GetConsoleConnectInfo(
                    compute_pb2.GetConsoleConnectInfoRequest(
                        instance_id=instance_id, protocol=protocol
                    ),
                    timeout=AGENT_DEADLINE_S,
                )
            except grpc.aio.AioRpcError as exc:
                raise _agent_error(exc, instance_id, console=protocol) from exc
        if resp.instance_id != instance_id or not resp.host or resp.port <= 0:
            raise ConsoleUnavailable(f"Unavailable console type {protocol}.")
        return ConsoleEndpoint(resp.host, resp.port)

    @grpc_errors
    async def GetConsoleOutput(
        self, request: consoles_pb2.GetConsoleOutputRequest, context: Ctx
    ) -> consoles_pb2.GetConsoleOutputResponse:
        if request.length < 0:
            raise InvalidArgument("length must be 0 (everything) or a positive line count.")
        async with self._c.sessions() as session:
            row = await load_instance(session, request.id, request.project_id)
        # The log outlives a power-off, so a stopped server's console can still be read.
        _require_ready(row, (VmState.ACTIVE, VmState.STOPPED))
        assert row.host is not None
        endpoint = await self._compute_endpoint(row.host)
        output = await self._console_output(endpoint, row.uuid, request.length)
        return consoles_pb2.GetConsoleOutputResponse(output=output)

    @grpc_errors
    async def CreateConsoleToken(
        self, request: consoles_pb2.CreateConsoleTokenRequest, context: Ctx
    ) -> consoles_pb2.CreateConsoleTokenResponse:
        protocol = request.protocol or "vnc"
        console_type = request.console_type or "novnc"
        if (protocol, console_type) not in SUPPORTED:
            raise ConsoleUnavailable(f"Unavailable console type {console_type}.")
        async with self._c.sessions() as session:
            row = await load_instance(session, request.id, request.project_id)
        _require_ready(row, (VmState.ACTIVE,))
        assert row.host is not None
        endpoint = await self._compute_endpoint(row.host)
        console = await self._connect_info(endpoint, row.uuid, protocol)
        token = new_token()
        now = datetime.now(UTC)
        expires = now + timedelta(seconds=self._c.cfg.gateway.console_token_ttl_s)
        async with self._c.sessions() as session:
            await _purge_expired(session, now)
            session.add(
                ConsoleAuthToken(
                    token_hash=hash_token(token),
                    instance_uuid=row.uuid,
                    host=console.host,
                    port=console.port,
                    protocol=protocol,
                    console_type=console_type,
                    expires_at=expires,
                    created_at=now,
                )
            )
            await session.commit()
        log.info(
            "console token created",
            extra={"instance": row.uuid, "request_id": request.request_id, "protocol": protocol},
        )
        return consoles_pb2.CreateConsoleTokenResponse(
            token=token, expires_at=_ts(expires), instance_id=row.uuid
        )

    @grpc_errors
    async def ValidateConsoleToken(
        self, request: consoles_pb2.ValidateConsoleTokenRequest, context: Ctx
    ) -> consoles_pb2.ValidateConsoleTokenResponse:
        if not request.token:
            raise NotFound(INVALID_TOKEN)
        now = datetime.now(UTC)
        async with self._c.sessions() as session:
            found = await session.execute(
                select(ConsoleAuthToken, Instance)
                .join(Instance, Instance.uuid == ConsoleAuthToken.instance_uuid)
                .where(ConsoleAuthToken.token_hash == hash_token(request.token))
            )
            pair = found.first()
        if pair is None:
            raise NotFound(INVALID_TOKEN)
        tok, inst = pair
        if (
            is_expired(tok.expires_at, now)
            or inst.deleted
            or inst.task_state == TaskState.DELETING.value
            or not inst.host
        ):
            raise NotFound(INVALID_TOKEN)
        endpoint = await self._compute_endpoint(inst.host)
        return consoles_pb2.ValidateConsoleTokenResponse(
            instance_id=inst.uuid,
            host=inst.host,
            console_host=tok.host,
            console_port=tok.port,
            protocol=tok.protocol,
            console_type=tok.console_type,
            expires_at=_ts(tok.expires_at),
            compute_endpoint=endpoint,
        )


def _require_ready(row: Instance, states: tuple[VmState, ...]) -> None:
    if (
        not row.host
        or row.vm_state not in {s.value for s in states}
        or row.task_state == TaskState.DELETING.value
    ):
        raise Conflict(f"Instance {row.uuid} is not ready.")


def _agent_error(exc: grpc.aio.AioRpcError, instance_id: str, *, console: str = "") -> Exception:
    code = exc.code()
    if code == grpc.StatusCode.NOT_FOUND:
        # The agent does not (yet, or any more) run it: not ready, as Nova says.
        return Conflict(f"Instance {instance_id} is not ready.")
    if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT):
        if console:
            return ConsoleUnavailable(f"Unavailable console type {console}.")
        return ConsoleNotAvailable("Guest does not have a console available.")
    peer_failure: Exception = exc  # UNAVAILABLE and friends: grpc_errors says UNAVAILABLE
    return peer_failure


async def _purge_expired(session: AsyncSession, now: datetime) -> None:
    await session.execute(
        delete(ConsoleAuthToken)
        .where(ConsoleAuthToken.expires_at <= now)
        .execution_options(synchronize_session=False)
    )
