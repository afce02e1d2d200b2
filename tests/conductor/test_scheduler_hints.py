"""The same_host and different_host scheduler hints on the conductor's whole path: kept
with the server at create, and carried to Loom's real scheduler at every placement of it
(its boot, a reschedule after a failed build, an unshelve after offload, a cold or live
migration, an evacuation). Real PostgreSQL, real NATS; agents played on NATS for boots,
real node agents on libvirt's test:/// driver for moves."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import migrations_pb2, servers_pb2
from sqlalchemy import select

from controlplane.db.models import Instance
from controlplane.runtime.natsserver import NatsServerProcess
from tests.conductor.conftest import Agent, Harness
from tests.conductor.test_create import create_request
from tests.conductor.test_evacuate import evacuate, host_goes_down
from tests.conductor.test_flow import server, wait_for
from tests.conductor.test_moves import (
    Fleet,
    assert_usage_is_the_sum_of_allocations,
    claims,
    fleet,
    live_migrate,
    wait_status,
)
from tests.conductor.test_shelve import _answer as answer

K = agent_bus_pb2.InstanceEventKind
S = servers_pb2.ServerStatus


async def create(
    h: Harness,
    name: str,
    *,
    count: int = 1,
    force_host: str = "",
    same_host: tuple[str, ...] = (),
    different_host: tuple[str, ...] = (),
) -> list[str]:
    resp = await h.servers.CreateServers(
        create_request(
            request_id=f"req-{name}",
            name=name,
            min_count=count,
            max_count=count,
            force_host=force_host,
            same_host=list(same_host),
            different_host=list(different_host),
        )
    )
    return [s.id for s in resp.servers]


async def host_of(h: Harness, sid: str) -> str:
    """The host the server was placed on (waits for its placement)."""
    placed = await wait_for(h, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    return placed.host


async def errored(h: Harness, sid: str) -> servers_pb2.Server:
    return await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)


async def test_create_keeps_each_hinted_uuid_once_canonical_and_refuses_what_is_not_one(
    pg: Harness,
) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    (sid,) = await create(
        pg, "kept", same_host=(a.replace("-", "").upper(), a), different_host=(b,)
    )
    kept = await server(pg, sid)
    assert (list(kept.same_host), list(kept.different_host)) == ([a], [b])
    (plain,) = await create(pg, "plain")
    async with pg.sessions() as session:
        rows = dict((await session.execute(select(Instance.uuid, Instance.scheduler_hints))).all())
    assert rows == {sid: {"same_host": [a], "different_host": [b]}, plain: None}

    too_many = tuple(str(uuid.uuid4()) for _ in range(1001))
    for bad in ({"same_host": ("not-a-uuid",)}, {"different_host": too_many}):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(pg, "bad", **bad)  # type: ignore[arg-type]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "scheduler hint" in (err.value.details() or "")
    async with pg.sessions() as session:
        assert len((await session.execute(select(Instance.id))).all()) == 2


async def test_servers_booted_with_same_host_land_on_the_named_servers_host(
    stack: Harness,
) -> None:
    # The weigher prefers the roomier h2 and h3; only the hint sends servers to h1.
    await stack.scheduler.add_host("h1", memory_mb=8192)
    await stack.scheduler.add_host("h2", memory_mb=32768)
    await stack.scheduler.add_host("h3", memory_mb=32768)
    (a,) = await create(stack, "a", force_host="h1")
    assert await host_of(stack, a) == "h1"

    near = await create(stack, "near", count=6, same_host=(a,))
    assert [await host_of(stack, sid) for sid in near] == ["h1"] * 6
    shown = await server(stack, near[0])
    assert (list(shown.same_host), list(shown.different_host)) == ([a], [])
    assert set((await stack.scheduler.claims()).values()) == {"h1"}


async def test_servers_booted_with_different_host_never_land_on_the_named_servers_host(
    stack: Harness,
) -> None:
    # h1 is the weigher's favourite: without the hint, every server would go there.
    await stack.scheduler.add_host("h1", memory_mb=65536)
    await stack.scheduler.add_host("h2")
    await stack.scheduler.add_host("h3")
    (a,) = await create(stack, "a", force_host="h1")
    assert await host_of(stack, a) == "h1"

    apart = await create(stack, "apart", count=6, different_host=(a,))
    hosts = [await host_of(stack, sid) for sid in apart]
    assert "h1" not in hosts
    assert set(hosts) == {"h2", "h3"}
    (plain,) = await create(stack, "plain")
    assert await host_of(stack, plain) == "h1"


async def test_same_host_naming_only_an_unknown_server_ends_in_error_with_no_valid_host(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("h1")
    await stack.scheduler.add_host("h2")
    (sid,) = await create(stack, "lost", same_host=(str(uuid.uuid4()),))
    failed = await errored(stack, sid)
    assert failed.fault.code == 500
    assert failed.fault.message.startswith("No valid host was found.")
    assert "2 removed by same_host (holds none of the instances named by same_host)" in (
        failed.fault.message
    )
    assert failed.host == ""
    assert await stack.scheduler.claims() == {}


async def test_a_deleted_server_named_by_same_host_is_on_no_host(stack: Harness) -> None:
    await stack.scheduler.add_host("h1")
    assert stack.js is not None
    (a,) = await create(stack, "a")
    agent = Agent(stack.js, await host_of(stack, a))
    await agent.build_command()
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=a, request_id="d-a"))
    verb, _ = await agent.next_command()
    assert verb == "delete"
    await agent.report(a, K.INSTANCE_EVENT_KIND_DELETED)
    await wait_for(stack, a, lambda s: s.deleted)

    (sid,) = await create(stack, "orphan", same_host=(a,))
    failed = await errored(stack, sid)
    assert "removed by same_host" in failed.fault.message


async def test_a_rescheduled_build_keeps_its_different_host_hint(stack: Harness) -> None:
    for name in ("h1", "h2", "h3"):
        await stack.scheduler.add_host(name)
    assert stack.js is not None
    (a,) = await create(stack, "a", force_host="h1")
    await host_of(stack, a)
    (sid,) = await create(stack, "apart", different_host=(a,))
    first = await host_of(stack, sid)
    assert first in ("h2", "h3")
    agent = Agent(stack.js, first)
    cmd = await agent.build_command()
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=cmd.attempt)

    # Its one alternate (h1, holding a, is none) takes the second attempt.
    moved = await wait_for(stack, sid, lambda s: s.attempts == 2)
    assert moved.host == ({"h2", "h3"} - {first}).pop()
    agent = Agent(stack.js, moved.host)
    cmd = await agent.build_command()
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=cmd.attempt)

    # The third attempt asks the scheduler again, with the hint: h1 is still refused.
    failed = await errored(stack, sid)
    assert failed.fault.message.startswith("No valid host was found.")
    assert "1 removed by different_host" in failed.fault.message
    assert stack.scheduler.decisions == 3  # a, then the two of the hinted server
    assert await stack.scheduler.claims() == {a: "h1"}


async def test_an_unshelve_after_offload_keeps_the_different_host_hint(stack: Harness) -> None:
    # h2 is the weigher's favourite, and holds the server b must stay apart from.
    await stack.scheduler.add_host("h1")
    await stack.scheduler.add_host("h2", memory_mb=65536)
    await stack.scheduler.add_host("h3")
    assert stack.js is not None
    (a,) = await create(stack, "a", force_host="h2")
    assert await host_of(stack, a) == "h2"
    (b,) = await create(stack, "b", different_host=(a,))
    agent = Agent(stack.js, await host_of(stack, b))
    cmd = await agent.build_command()
    await agent.report(
        b,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=cmd.attempt,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(stack, b, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    await stack.servers.ShelveServer(servers_pb2.ShelveServerRequest(id=b, request_id="sh"))
    await answer(agent, b, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    await answer(agent, b, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(stack, b, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)

    await stack.servers.UnshelveServer(servers_pb2.UnshelveServerRequest(id=b, request_id="un"))
    back = await host_of(stack, b)
    assert back in ("h1", "h3")
    assert (await stack.scheduler.claims())[b] == back


# ------------------------------------------------------------------ moves


async def boot_hinted(
    f: Fleet, name: str, host: str, *, different_host: tuple[str, ...] = ()
) -> servers_pb2.Server:
    (sid,) = await create(f.h, name, force_host=host, different_host=different_host)
    return await wait_status(f, sid, S.SERVER_STATUS_ACTIVE)


async def test_a_cold_migration_keeps_the_different_host_hint(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    # h2 is the weigher's favourite, but it holds the server b must stay apart from.
    hosts = {"h1": {}, "h2": {"memory_mb": 65536}, "h3": {}}
    async with fleet(pg_url, fresh_nats, tmp_path, agents=("h1", "h2", "h3"), hosts=hosts) as f:
        a = await boot_hinted(f, "a", "h2")
        b = await boot_hinted(f, "b", "h1", different_host=(a.id,))
        resp = await f.migrations.MigrateServer(
            migrations_pb2.MigrateServerRequest(request_id="req-mig", id=b.id)
        )
        assert (resp.migration.source_compute, resp.migration.dest_compute) == ("h1", "h3")
        moved = await wait_status(f, b.id, S.SERVER_STATUS_VERIFY_RESIZE)
        assert moved.host == "h3"
        await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=b.id))
        await wait_status(f, b.id, S.SERVER_STATUS_ACTIVE)
        assert await claims(f) == {a.id: "h2", b.id: "h3"}
        await assert_usage_is_the_sum_of_allocations(f)


async def test_a_cold_migration_with_no_host_apart_is_refused_and_changes_nothing(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    async with fleet(pg_url, fresh_nats, tmp_path) as f:
        a = await boot_hinted(f, "a", "h2")
        b = await boot_hinted(f, "b", "h1", different_host=(a.id,))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await f.migrations.MigrateServer(migrations_pb2.MigrateServerRequest(id=b.id))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        details = err.value.details() or ""
        assert "No valid host" in details
        assert "different_host removed 1" in details
        after = await server(f.h, b.id)
        assert (after.status, after.task_state, after.host) == (S.SERVER_STATUS_ACTIVE, 0, "h1")
        assert await claims(f) == {a.id: "h2", b.id: "h1"}


@pytest.fixture
async def b_apart_from_a(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[tuple[Fleet, str, str]]:
    """Three hosts with agents; a on h2, the weigher's favourite, and b on h1, booted with
    different_host=[a]."""
    hosts = {"h1": {}, "h2": {"memory_mb": 65536}, "h3": {}}
    async with fleet(pg_url, fresh_nats, tmp_path, agents=("h1", "h2", "h3"), hosts=hosts) as f:
        a = await boot_hinted(f, "a", "h2")
        b = await boot_hinted(f, "b", "h1", different_host=(a.id,))
        yield f, a.id, b.id


async def test_a_live_migration_keeps_the_different_host_hint(
    b_apart_from_a: tuple[Fleet, str, str],
) -> None:
    f, a, b = b_apart_from_a
    mig = await live_migrate(f, b)
    assert (mig.migration_type, mig.dest_compute) == ("live-migration", "h3")
    moved = await wait_status(f, b, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h3"
    assert (await claims(f))[a] == "h2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_migrate(f, b, host="h2")  # a requested host is checked by the filters
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different_host removed 1" in (err.value.details() or "")


async def test_an_evacuation_keeps_the_different_host_hint(
    b_apart_from_a: tuple[Fleet, str, str],
) -> None:
    f, a, b = b_apart_from_a
    await host_goes_down(f, "h1")
    mig = await evacuate(f, b)
    assert (mig.source_compute, mig.dest_compute) == ("h1", "h3")
    moved = await wait_status(f, b, S.SERVER_STATUS_ACTIVE)
    assert moved.host == "h3"
    assert (await claims(f))[a] == "h2"
