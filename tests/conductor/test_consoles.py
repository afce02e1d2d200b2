"""ConsolesService: console output through the host's agent, and console tokens that are
random, stored hashed, bound to one instance and its console endpoint, and expire."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from loom.compute.v1 import compute_pb2, compute_pb2_grpc
from loom.conductor.v1 import consoles_pb2, consoles_pb2_grpc, servers_pb2
from sqlalchemy import select, update

from controlplane.conductor.consoles import hash_token, is_expired
from controlplane.db.models import ConsoleAuthToken
from controlplane.runtime.grpcserver import Registration, RunningServer, start_grpc_server
from tests.conductor.conftest import Harness, harness
from tests.conductor.factories import PROJECT, add, make_instance


@dataclass
class ComputePeer(compute_pb2_grpc.ComputeServiceServicer):
    """Plays a host agent's ComputeService: consoles where the test says they are."""

    consoles: dict[str, tuple[str, int]] = field(default_factory=dict)
    output: dict[str, str] = field(default_factory=dict)
    offers_consoles: bool = True
    lengths: list[int] = field(default_factory=list)

    async def GetConsoleConnectInfo(
        self, request: compute_pb2.GetConsoleConnectInfoRequest, context: grpc.aio.ServicerContext
    ) -> compute_pb2.GetConsoleConnectInfoResponse:
        if not self.offers_consoles:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no consoles here")
        if request.instance_id not in self.consoles:
            await context.abort(grpc.StatusCode.NOT_FOUND, "not here")
        host, port = self.consoles[request.instance_id]
        return compute_pb2.GetConsoleConnectInfoResponse(
            host=host, port=port, instance_id=request.instance_id
        )

    async def GetConsoleOutput(
        self, request: compute_pb2.GetConsoleOutputRequest, context: grpc.aio.ServicerContext
    ) -> compute_pb2.GetConsoleOutputResponse:
        if not self.offers_consoles:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no consoles here")
        self.lengths.append(request.length)
        text = self.output.get(request.instance_id, "")
        if request.length:
            text = "\n".join(text.splitlines()[-request.length :])
        return compute_pb2.GetConsoleOutputResponse(output=text)


@dataclass
class Consoles:
    h: Harness
    agent: ComputePeer
    stub: consoles_pb2_grpc.ConsolesServiceStub


@pytest.fixture
async def consoles(pg_url: str) -> AsyncIterator[Consoles]:
    agent = ComputePeer()
    server: RunningServer = await start_grpc_server(
        "127.0.0.1:0",
        [
            Registration(
                agent,
                compute_pb2_grpc.add_ComputeServiceServicer_to_server,
                "loom.compute.v1.ComputeService",
            )
        ],
    )
    async with harness(pg_url) as h:
        await h.scheduler.add_host("host-1", compute_endpoint=f"127.0.0.1:{server.port}")
        assert h.consoles is not None
        yield Consoles(h, agent, h.consoles)
    await server.stop(0)


def test_a_token_is_hashed_with_sha256() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()


def test_a_token_expires_at_its_expiry_time_even_when_stored_without_a_zone() -> None:
    now = datetime.now(UTC)
    assert is_expired(now.replace(tzinfo=None), now)
    assert not is_expired((now + timedelta(seconds=1)).replace(tzinfo=None), now)


async def _server(c: Consoles, **over: object) -> str:
    row = make_instance(**over)
    await add(c.h.sessions, row)
    c.agent.consoles[row.uuid] = ("127.0.0.1", 5901)
    return row.uuid


async def _token(c: Consoles, iid: str, project: str = PROJECT) -> str:
    reply = await c.stub.CreateConsoleToken(
        consoles_pb2.CreateConsoleTokenRequest(
            request_id=uuid.uuid4().hex,
            id=iid,
            project_id=project,
            protocol="vnc",
            console_type="novnc",
        ),
        timeout=10,
    )
    return str(reply.token)


async def _validate(c: Consoles, token: str) -> consoles_pb2.ValidateConsoleTokenResponse:
    reply: consoles_pb2.ValidateConsoleTokenResponse = await c.stub.ValidateConsoleToken(
        consoles_pb2.ValidateConsoleTokenRequest(token=token), timeout=10
    )
    return reply


async def _code(awaitable: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await awaitable  # type: ignore[misc]
    code: grpc.StatusCode = err.value.code()
    return code


async def test_a_token_is_stored_only_as_its_hash_and_grants_its_instance_and_console(
    consoles: Consoles,
) -> None:
    iid = await _server(consoles)
    token = await _token(consoles, iid)
    assert len(token) >= 40
    async with consoles.h.sessions() as s:
        rows = (await s.execute(select(ConsoleAuthToken))).scalars().all()
    assert [r.token_hash for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in {r.token_hash for r in rows}
    grant = await _validate(consoles, token)
    assert (grant.instance_id, grant.host) == (iid, "host-1")
    assert (grant.console_host, grant.console_port) == ("127.0.0.1", 5901)
    assert grant.compute_endpoint.startswith("127.0.0.1:")
    ttl = grant.expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=590) < ttl <= timedelta(seconds=600)


async def test_two_tokens_for_one_server_differ(consoles: Consoles) -> None:
    iid = await _server(consoles)
    assert await _token(consoles, iid) != await _token(consoles, iid)


async def test_an_unknown_or_empty_token_is_refused_as_not_found(consoles: Consoles) -> None:
    await _token(consoles, await _server(consoles))
    assert await _code(_validate(consoles, "no-such-token")) == grpc.StatusCode.NOT_FOUND
    assert await _code(_validate(consoles, "")) == grpc.StatusCode.NOT_FOUND


async def test_an_expired_token_is_refused_and_purged_by_the_next_create(
    consoles: Consoles,
) -> None:
    iid = await _server(consoles)
    token = await _token(consoles, iid)
    async with consoles.h.sessions() as s:
        await s.execute(
            update(ConsoleAuthToken).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await s.commit()
    assert await _code(_validate(consoles, token)) == grpc.StatusCode.NOT_FOUND
    await _token(consoles, iid)
    async with consoles.h.sessions() as s:
        hashes = (await s.execute(select(ConsoleAuthToken.token_hash))).scalars().all()
    assert hash_token(token) not in hashes
    assert len(hashes) == 1


async def test_deleting_the_server_invalidates_its_tokens(consoles: Consoles) -> None:
    iid = await _server(consoles)
    other = await _server(consoles)
    token, kept = await _token(consoles, iid), await _token(consoles, other)
    await consoles.h.servers.DeleteServer(
        servers_pb2.DeleteServerRequest(request_id="del-1", id=iid, project_id=PROJECT), timeout=10
    )
    assert await _code(_validate(consoles, token)) == grpc.StatusCode.NOT_FOUND
    async with consoles.h.sessions() as s:
        left = (await s.execute(select(ConsoleAuthToken.instance_uuid))).scalars().all()
    assert left == [other]
    assert (await _validate(consoles, kept)).instance_id == other


async def test_a_token_row_left_for_a_deleted_server_grants_nothing(consoles: Consoles) -> None:
    iid = await _server(consoles)
    token = await _token(consoles, iid)
    async with consoles.h.sessions() as s:
        from controlplane.db.models import Instance

        await s.execute(update(Instance).where(Instance.uuid == iid).values(deleted=True))
        await s.commit()
    assert await _code(_validate(consoles, token)) == grpc.StatusCode.NOT_FOUND


async def test_only_an_active_server_of_the_callers_project_gets_a_token(
    consoles: Consoles,
) -> None:
    stopped = await _server(consoles, vm_state="stopped", power_state=4)
    building = await _server(consoles, vm_state="building", host=None, node=None)
    mine = await _server(consoles)
    assert await _code(_token(consoles, stopped)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await _code(_token(consoles, building)) == grpc.StatusCode.FAILED_PRECONDITION
    assert await _code(_token(consoles, mine, "other")) == grpc.StatusCode.NOT_FOUND
    assert await _code(_token(consoles, str(uuid.uuid4()))) == grpc.StatusCode.NOT_FOUND


async def test_a_protocol_other_than_vnc_novnc_is_refused_as_unavailable(
    consoles: Consoles,
) -> None:
    iid = await _server(consoles)
    reply = consoles.stub.CreateConsoleToken(
        consoles_pb2.CreateConsoleTokenRequest(
            id=iid, protocol="spice", console_type="spice-html5"
        ),
        timeout=10,
    )
    assert await _code(reply) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_hypervisor_without_consoles_is_a_clean_refusal_for_tokens_and_output(
    consoles: Consoles,
) -> None:
    iid = await _server(consoles)
    consoles.agent.offers_consoles = False
    assert await _code(_token(consoles, iid)) == grpc.StatusCode.INVALID_ARGUMENT
    output = consoles.stub.GetConsoleOutput(
        consoles_pb2.GetConsoleOutputRequest(id=iid), timeout=10
    )
    assert await _code(output) == grpc.StatusCode.NOT_FOUND


async def test_console_output_is_the_agents_tail_of_the_requested_length(
    consoles: Consoles,
) -> None:
    iid = await _server(consoles)
    stopped = await _server(consoles, vm_state="stopped", power_state=4)
    consoles.agent.output[iid] = "one\ntwo\nthree"
    consoles.agent.output[stopped] = "still here"
    reply = await consoles.stub.GetConsoleOutput(
        consoles_pb2.GetConsoleOutputRequest(id=iid, project_id=PROJECT, length=2), timeout=10
    )
    assert reply.output == "two\nthree"
    whole = await consoles.stub.GetConsoleOutput(
        consoles_pb2.GetConsoleOutputRequest(id=iid), timeout=10
    )
    assert whole.output == "one\ntwo\nthree"
    assert consoles.agent.lengths == [2, 0]
    # The serial log outlives a power-off.
    off = await consoles.stub.GetConsoleOutput(
        consoles_pb2.GetConsoleOutputRequest(id=stopped), timeout=10
    )
    assert off.output == "still here"


async def test_a_server_its_agent_does_not_run_yet_is_not_ready(consoles: Consoles) -> None:
    iid = await _server(consoles)
    del consoles.agent.consoles[iid]
    assert await _code(_token(consoles, iid)) == grpc.StatusCode.FAILED_PRECONDITION
