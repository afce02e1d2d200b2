"""Moves on the whole path: resize, cold migration, confirm, revert, auto-confirm and a
destination that dies mid-move. Real PostgreSQL, Loom's real scheduler, real NATS, and two
real node agents on libvirt's test:/// driver, one per host."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from loom.catalog.v1 import quotas_pb2
from loom.conductor.v1 import fleet_pb2, migrations_pb2, migrations_pb2_grpc, servers_pb2
from sqlalchemy import text

from controlplane.conductor import moves
from controlplane.conductor.moves import MoveSweeper
from controlplane.config import AgentConfig, LoomConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from nodeagent.agent import HostAgent
from nodeagent.driver.base import InstanceNotFound, PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from tests.conductor.conftest import (
    STEP_S,
    Harness,
    conductor_config,
    eventually,
    harness,
    running_workers,
)
from tests.conductor.factories import add, make_flavor
from tests.conductor.test_create import PROJECT, USER, create_request
from tests.nodeagent.support import make_test_driver
from tests.support.invariants import OVERCOMMITTED_HOSTS_SQL, USAGE_MISMATCH_SQL

S = servers_pb2.ServerStatus
# A move takes several round trips through the relay, NATS and both agents.
MOVE_S = 6 * STEP_S


@dataclass
class Fleet:
    h: Harness
    migrations: migrations_pb2_grpc.MigrationsServiceStub
    agents: dict[str, HostAgent]

    def driver(self, host: str) -> LibvirtDriver:
        d = self.agents[host].driver
        assert isinstance(d, LibvirtDriver)
        return d


@contextlib.asynccontextmanager
async def fleet(
    pg_url: str,
    nats: NatsServerProcess,
    tmp_path: Path,
    cfg: LoomConfig | None = None,
    *,
    agents: tuple[str, ...] = ("h1", "h2"),
    hosts: dict[str, dict[str, int]] | None = None,
) -> AsyncIterator[Fleet]:
    async with harness(pg_url, cfg) as h, running_workers(h, nats.url):
        await add(h.sessions, make_flavor("2", vcpus=2, memory_mb=1024, root_gb=2))
        for name, size in (hosts or {"h1": {}, "h2": {}}).items():
            await h.scheduler.add_host(name, **size)
        assert h.nc is not None
        started: dict[str, HostAgent] = {}
        try:
            for name in agents:
                agent = HostAgent(
                    host=name,
                    driver=make_test_driver(tmp_path, name),
                    nc=h.nc,
                    cfg=AgentConfig(
                        heartbeat_interval=3600.0, power_sync_interval=3600.0, shutdown_timeout=1
                    ),
                    compute_endpoint="127.0.0.1:1",
                    host_ip="127.0.0.1",
                )
                await agent.start()
                started[name] = agent
            assert h.migrations is not None
            yield Fleet(h, h.migrations, started)
        finally:
            for agent in started.values():
                await agent.stop()


@pytest.fixture
async def two_hosts(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> AsyncIterator[Fleet]:
    async with fleet(pg_url, fresh_nats, tmp_path) as f:
        yield f


async def server(f: Fleet, sid: str) -> servers_pb2.Server:
    return (await f.h.servers.GetServer(servers_pb2.GetServerRequest(id=sid))).server


async def wait_status(
    f: Fleet, sid: str, status: int, within: float = MOVE_S
) -> servers_pb2.Server:
    async def probe() -> servers_pb2.Server | None:
        s = await server(f, sid)
        return s if s.status == status and s.task_state == 0 else None

    found = await eventually(probe, within, f"server {S.Name(status)}")
    assert found is not None
    return found


async def boot(f: Fleet, name: str = "vm", host: str = "h1") -> servers_pb2.Server:
    resp = await f.h.servers.CreateServers(
        create_request(request_id=f"req-{name}", name=name, force_host=host)
    )
    return await wait_status(f, resp.servers[0].id, S.SERVER_STATUS_ACTIVE)


async def claims(f: Fleet) -> dict[str, str]:
    return await f.h.scheduler.claims()


async def assert_usage_is_the_sum_of_allocations(f: Fleet) -> None:
    async with f.h.engine.connect() as conn:
        assert (await conn.execute(text(USAGE_MISMATCH_SQL))).scalar_one() == 0
        assert (await conn.execute(text(OVERCOMMITTED_HOSTS_SQL))).scalar_one() == 0


async def resize(f: Fleet, sid: str, flavor: str = "2", rid: str = "") -> migrations_pb2.Migration:
    resp = await f.migrations.ResizeServer(
        migrations_pb2.ResizeServerRequest(
            request_id=rid or f"req-{uuid.uuid4()}",
            id=sid,
            project_id=PROJECT,
            user_id=USER,
            flavor_id=flavor,
        )
    )
    return resp.migration


async def migration(f: Fleet, sid: str) -> migrations_pb2.Migration:
    resp = await f.migrations.ListMigrations(
        migrations_pb2.ListMigrationsRequest(instance_uuid=sid)
    )
    return resp.migrations[0]


async def migration_rid(f: Fleet, sid: str) -> str:
    """The request id of the server's latest resize action."""
    resp = await f.h.servers.ListInstanceActions(servers_pb2.ListInstanceActionsRequest(id=sid))
    return next(a.request_id for a in resp.actions if a.action == "resize")


def memory_kib(d: LibvirtDriver, sid: str) -> int:
    dom = d._require(sid)
    return int(dom.maxMemory())


async def test_a_resize_holds_both_hosts_until_confirm_then_only_the_destination(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    mig = await resize(f, s.id)
    assert (mig.source_compute, mig.dest_compute, mig.migration_type) == ("h1", "h2", "resize")

    moved = await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    assert (moved.host, moved.flavor.id, moved.flavor.memory_mb) == ("h2", "2", 1024)
    # The destination claim is the instance's; the source's is the migration's.
    assert await claims(f) == {s.id: "h2", mig.uuid: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert f.driver("h1").describe(s.id) == PowerState.SHUTDOWN
    assert f.driver("h2").describe(s.id) == PowerState.RUNNING
    assert memory_kib(f.driver("h2"), s.id) == 1024 * 1024
    assert (await migration(f, s.id)).status == "finished"
    # The source's kept domain is still expected there (a reconcile must not destroy it).
    listed = await f.h.fleet.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host="h1"))
    assert [(i.spec.instance_id, i.move_copy) for i in listed.instances] == [(s.id, True)]
    # ...as a copy: the server is h2's, where it is listed as its own.
    listed = await f.h.fleet.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host="h2"))
    assert [(i.spec.instance_id, i.move_copy) for i in listed.instances] == [(s.id, False)]

    await f.migrations.ConfirmResize(
        migrations_pb2.ConfirmResizeRequest(request_id="req-confirm", id=s.id, user_id=USER)
    )
    done = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (done.host, done.flavor.id) == ("h2", "2")
    assert await claims(f) == {s.id: "h2"}
    listed = await f.h.fleet.ListHostInstances(fleet_pb2.ListHostInstancesRequest(host="h1"))
    assert list(listed.instances) == []
    await assert_usage_is_the_sum_of_allocations(f)
    with pytest.raises(InstanceNotFound):
        f.driver("h1").describe(s.id)
    assert (await migration(f, s.id)).status == "confirmed"
    actions = await f.h.servers.ListInstanceActions(servers_pb2.ListInstanceActionsRequest(id=s.id))
    assert [a.action for a in actions.actions][:2] == ["confirmResize", "resize"]


async def test_a_revert_goes_back_to_the_source_with_the_old_flavor_and_frees_the_destination(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    mig = await resize(f, s.id)
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)

    await f.migrations.RevertResize(
        migrations_pb2.RevertResizeRequest(request_id="req-revert", id=s.id, user_id=USER)
    )
    back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (back.host, back.flavor.id, back.flavor.memory_mb) == ("h1", "1", 512)
    assert await claims(f) == {s.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert f.driver("h1").describe(s.id) == PowerState.RUNNING
    with pytest.raises(InstanceNotFound):
        f.driver("h2").describe(s.id)
    found = await migration(f, s.id)
    assert (found.uuid, found.status) == (mig.uuid, "reverted")


async def test_a_stopped_server_is_resized_stopped_and_stays_stopped_after_confirm(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.servers.StopServer(servers_pb2.StopServerRequest(request_id="req-stop", id=s.id))
    await wait_status(f, s.id, S.SERVER_STATUS_SHUTOFF)
    await resize(f, s.id)
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    assert f.driver("h2").describe(s.id) == PowerState.SHUTDOWN
    await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=s.id))
    await wait_status(f, s.id, S.SERVER_STATUS_SHUTOFF)


async def test_a_resize_to_the_same_flavor_is_refused_and_changes_nothing(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resize(f, s.id, flavor="1")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must change flavor" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resize(f, s.id, flavor="nope")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = await server(f, s.id)
    assert (after.status, after.task_state) == (S.SERVER_STATUS_ACTIVE, 0)
    assert await claims(f) == {s.id: "h1"}


async def test_confirm_or_revert_of_a_server_not_waiting_for_it_is_a_conflict(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    for call in (f.migrations.ConfirmResize, f.migrations.RevertResize):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(migrations_pb2.ConfirmResizeRequest(id=s.id))  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_cold_migration_to_a_requested_host_keeps_the_flavor(two_hosts: Fleet) -> None:
    f = two_hosts
    s = await boot(f)
    resp = await f.migrations.MigrateServer(
        migrations_pb2.MigrateServerRequest(request_id="req-mig", id=s.id, host="h2")
    )
    assert resp.migration.migration_type == "migration"
    moved = await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    assert (moved.host, moved.flavor.id) == ("h2", "1")
    assert await claims(f) == {s.id: "h2", resp.migration.uuid: "h1"}
    await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=s.id))
    await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert await claims(f) == {s.id: "h2"}
    await assert_usage_is_the_sum_of_allocations(f)


async def test_a_migration_to_an_unknown_or_the_current_host_is_refused(two_hosts: Fleet) -> None:
    f = two_hosts
    s = await boot(f)
    for host in ("nowhere", "h1"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await f.migrations.MigrateServer(
                migrations_pb2.MigrateServerRequest(id=s.id, host=host)
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await claims(f) == {s.id: "h1"}
    listed = await f.migrations.ListMigrations(migrations_pb2.ListMigrationsRequest())
    assert list(listed.migrations) == []


async def test_a_migration_to_a_host_without_room_is_refused_with_the_source_kept(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    hosts = {"h1": {}, "h2": {"memory_mb": 256}}
    async with fleet(pg_url, fresh_nats, tmp_path, hosts=hosts) as f:
        s = await boot(f)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await f.migrations.MigrateServer(
                migrations_pb2.MigrateServerRequest(id=s.id, host="h2")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "No valid host" in (err.value.details() or "")
        after = await server(f, s.id)
        assert (after.status, after.task_state, after.host) == (S.SERVER_STATUS_ACTIVE, 0, "h1")
        assert await claims(f) == {s.id: "h1"}
        assert (await migration(f, s.id)).status == "error"
        await assert_usage_is_the_sum_of_allocations(f)


async def test_two_resizes_into_a_host_with_room_for_one_never_over_commit_it(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    # h2 has room for exactly one server of flavor "2" (1024 MiB).
    hosts = {"h1": {}, "h2": {"memory_mb": 1536}}
    async with fleet(pg_url, fresh_nats, tmp_path, hosts=hosts) as f:
        a = await boot(f, "a")
        b = await boot(f, "b")
        outcomes = await asyncio.gather(
            resize(f, a.id, rid="req-ra"), resize(f, b.id, rid="req-rb"), return_exceptions=True
        )
        won = [o for o in outcomes if isinstance(o, migrations_pb2.Migration)]
        lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert len(won) == 1, outcomes
        assert len(lost) == 1, outcomes
        assert lost[0].code() == grpc.StatusCode.INVALID_ARGUMENT
        await assert_usage_is_the_sum_of_allocations(f)
        winner = won[0].instance_uuid
        await wait_status(f, winner, S.SERVER_STATUS_VERIFY_RESIZE)
        await assert_usage_is_the_sum_of_allocations(f)


async def test_a_resize_waiting_longer_than_the_confirm_window_is_confirmed_by_the_conductor(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    cfg = conductor_config(resize_confirm_window=1)
    async with fleet(pg_url, fresh_nats, tmp_path, cfg) as f:
        s = await boot(f)
        mig = await resize(f, s.id)
        await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
        sweeper = MoveSweeper(f.h.conductor, interval=0.2)
        assert await sweeper.sweep() == 0  # not yet: the window has not passed
        await asyncio.sleep(1.2)
        assert await sweeper.sweep() == 1
        await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
        assert (await migration(f, s.id)).status == "confirmed"
        assert await claims(f) == {s.id: "h2"}
        assert mig.uuid not in await claims(f)
        await assert_usage_is_the_sum_of_allocations(f)


async def test_a_move_whose_destination_dies_goes_back_to_the_source_with_its_allocation(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    # h2 has no agent: it never answers, and its heartbeats stop.
    async with fleet(pg_url, fresh_nats, tmp_path, agents=("h1",)) as f:
        s = await boot(f)
        mig = await resize(f, s.id)

        async def finishing() -> bool:
            return (await server(f, s.id)).task_state == servers_pb2.TASK_STATE_RESIZE_FINISH

        await eventually(finishing, MOVE_S)
        assert await claims(f) == {s.id: "h2", mig.uuid: "h1"}
        f.h.scheduler.stop_heartbeats("h2")
        assert await MoveSweeper(f.h.conductor).sweep() == 1
        back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
        assert (back.host, back.flavor.id) == ("h1", "1")
        assert f.driver("h1").describe(s.id) == PowerState.RUNNING
        assert await claims(f) == {s.id: "h1"}
        await assert_usage_is_the_sum_of_allocations(f)
        assert (await migration(f, s.id)).status == "error"
        # The down host is told to drop whatever it made, for when it comes back.
        assert f.h.js is not None
        info = await f.h.js.stream_info(bus.COMPUTE_STREAM)
        assert info.state.messages >= 1


async def test_a_resize_to_the_same_host_when_allowed_confirms_and_reverts_in_place(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    cfg = conductor_config(allow_resize_to_same_host=True)
    async with fleet(pg_url, fresh_nats, tmp_path, cfg, agents=("h1",), hosts={"h1": {}}) as f:
        s = await boot(f)
        mig = await resize(f, s.id)
        assert mig.dest_compute == "h1"
        await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
        assert memory_kib(f.driver("h1"), s.id) == 1024 * 1024
        # Both allocations on the one host, as both sides hold one.
        assert await claims(f) == {s.id: "h1", mig.uuid: "h1"}
        await f.migrations.RevertResize(migrations_pb2.RevertResizeRequest(id=s.id))
        back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
        assert (back.host, back.flavor.id) == ("h1", "1")
        assert memory_kib(f.driver("h1"), s.id) == 512 * 1024
        assert f.driver("h1").describe(s.id) == PowerState.RUNNING
        assert await claims(f) == {s.id: "h1"}
        await assert_usage_is_the_sum_of_allocations(f)

        await resize(f, s.id)
        await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
        await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=s.id))
        done = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
        assert done.flavor.id == "2"
        assert f.driver("h1").describe(s.id) == PowerState.RUNNING
        assert await claims(f) == {s.id: "h1"}
        await assert_usage_is_the_sum_of_allocations(f)


async def test_migration_records_are_listed_newest_first_with_filters_and_pages(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    a = await boot(f, "a")
    b = await boot(f, "b")
    first = await resize(f, a.id)
    await wait_status(f, a.id, S.SERVER_STATUS_VERIFY_RESIZE)
    second = await f.migrations.MigrateServer(migrations_pb2.MigrateServerRequest(id=b.id))
    await wait_status(f, b.id, S.SERVER_STATUS_VERIFY_RESIZE)

    async def listed(**kw: Any) -> list[str]:
        resp = await f.migrations.ListMigrations(migrations_pb2.ListMigrationsRequest(**kw))
        return [m.uuid for m in resp.migrations]

    assert await listed() == [second.migration.uuid, first.uuid]
    assert await listed(migration_type="resize") == [first.uuid]
    assert await listed(instance_uuid=b.id) == [second.migration.uuid]
    assert await listed(status="finished", source_compute="h1") == [
        second.migration.uuid,
        first.uuid,
    ]
    assert await listed(host="h2", limit=1) == [second.migration.uuid]
    assert await listed(limit=1, marker=second.migration.uuid) == [first.uuid]
    assert await listed(project_id="another") == []
    one = await f.migrations.ListMigrations(migrations_pb2.ListMigrationsRequest(limit=1))
    assert one.migrations[0].new_instance_type_id > 0


async def test_a_resize_up_beyond_the_projects_cores_quota_is_refused_and_changes_nothing(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=PROJECT, limits={"cores": 1})
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resize(f, s.id)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = await server(f, s.id)
    assert (after.status, after.task_state, after.flavor.id) == (S.SERVER_STATUS_ACTIVE, 0, "1")
    assert await claims(f) == {s.id: "h1"}


async def test_a_server_deleted_while_waiting_for_confirm_leaves_no_allocation_or_domain(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await resize(f, s.id)
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    await f.h.servers.DeleteServer(servers_pb2.DeleteServerRequest(request_id="req-del", id=s.id))

    async def gone() -> bool:
        resp = await f.h.servers.GetServer(
            servers_pb2.GetServerRequest(id=s.id, include_deleted=True)
        )
        return resp.server.deleted

    await eventually(gone, MOVE_S)
    assert await MoveSweeper(f.h.conductor).sweep() == 1
    assert await claims(f) == {}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration(f, s.id)).status == "confirmed"

    async def dropped_on_both() -> bool:
        return (
            s.id not in f.driver("h1").list_instances()
            and s.id not in f.driver("h2").list_instances()
        )

    await eventually(dropped_on_both, MOVE_S)
    assert await MoveSweeper(f.h.conductor).sweep() == 0


async def test_a_destination_that_cannot_define_the_server_sends_it_back_to_its_source(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    # libvirt refuses a domain without vCPUs when it is defined: the destination's step fails.
    await add(f.h.sessions, make_flavor("novcpu", vcpus=0, memory_mb=1024, root_gb=2))
    s = await boot(f)
    await resize(f, s.id, flavor="novcpu")
    back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (back.host, back.flavor.id) == ("h1", "1")
    assert f.driver("h1").describe(s.id) == PowerState.RUNNING
    assert s.id not in f.driver("h2").list_instances()
    assert await claims(f) == {s.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration(f, s.id)).status == "error"
    action = await f.h.servers.GetInstanceAction(
        servers_pb2.GetInstanceActionRequest(id=s.id, request_id=(await migration_rid(f, s.id)))
    )
    results = {e.event: e.result for e in action.action.events}
    assert results["compute_finish_resize"] == "Error"
    assert action.action.message == "Error"


async def test_a_second_resize_of_one_server_is_auto_confirmed_too(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    cfg = conductor_config(resize_confirm_window=1)
    async with fleet(pg_url, fresh_nats, tmp_path, cfg) as f:
        await add(f.h.sessions, make_flavor("3", vcpus=3, memory_mb=1024, root_gb=2))
        s = await boot(f)
        sweeper = MoveSweeper(f.h.conductor, interval=0.2)
        for flavor in ("2", "3"):
            await resize(f, s.id, flavor=flavor)
            await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
            await asyncio.sleep(1.2)
            assert await sweeper.sweep() == 1
            done = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
            assert done.flavor.id == flavor
        await assert_usage_is_the_sum_of_allocations(f)


async def test_a_move_cut_short_while_choosing_its_destination_is_undone_by_the_sweep(
    two_hosts: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.scheduler.stop()  # the scheduler cannot be reached: the start stops half-way
    with pytest.raises(grpc.aio.AioRpcError):
        await resize(f, s.id)
    stuck = await server(f, s.id)
    assert stuck.task_state == servers_pb2.TASK_STATE_RESIZE_PREP
    await f.h.scheduler.start()
    monkeypatch.setattr(moves, "STALE_START_S", 0.0)
    sweeper = MoveSweeper(f.h.conductor)

    async def undone() -> bool:
        # Each pass tries again until the scheduler answers (its channel reconnects).
        await sweeper.sweep()
        return (await migration(f, s.id)).status == "error"

    await eventually(undone, MOVE_S)
    back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (back.host, back.flavor.id) == ("h1", "1")
    assert await claims(f) == {s.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)


async def live_migrate(f: Fleet, sid: str, host: str = "") -> migrations_pb2.Migration:
    resp = await f.migrations.LiveMigrateServer(
        migrations_pb2.LiveMigrateServerRequest(
            request_id=f"req-{uuid.uuid4()}", id=sid, user_id=USER, host=host
        )
    )
    return resp.migration


async def test_a_live_migration_starts_the_server_on_the_destination_then_drops_the_source(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    mig = await live_migrate(f, s.id, host="h2")
    assert mig.migration_type == "live-migration"
    moved = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (moved.host, moved.flavor.id) == ("h2", "1")
    assert f.driver("h2").describe(s.id) == PowerState.RUNNING

    async def completed() -> bool:
        return (await migration(f, s.id)).status == "completed"

    await eventually(completed, MOVE_S)
    assert s.id not in f.driver("h1").list_instances()
    assert await claims(f) == {s.id: "h2"}
    await assert_usage_is_the_sum_of_allocations(f)
    in_progress = await f.migrations.ListMigrations(
        migrations_pb2.ListMigrationsRequest(instance_uuid=s.id, in_progress=True)
    )
    assert list(in_progress.migrations) == []


async def test_a_paused_server_live_migrates_and_stays_paused_on_the_destination(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.servers.PauseServer(servers_pb2.PauseServerRequest(request_id="req-pause", id=s.id))
    await wait_status(f, s.id, S.SERVER_STATUS_PAUSED)
    await live_migrate(f, s.id, host="h2")

    async def completed() -> bool:
        return (await migration(f, s.id)).status == "completed"

    await eventually(completed, MOVE_S)
    moved = await server(f, s.id)
    assert (moved.status, moved.host, moved.task_state) == (
        S.SERVER_STATUS_PAUSED,
        "h2",
        servers_pb2.TASK_STATE_UNSPECIFIED,
    )
    assert f.driver("h2").describe(s.id) == PowerState.PAUSED
    assert s.id not in f.driver("h1").list_instances()
    assert await claims(f) == {s.id: "h2"}
    await assert_usage_is_the_sum_of_allocations(f)
    # It unpauses where it is now.
    await f.h.servers.UnpauseServer(
        servers_pb2.UnpauseServerRequest(request_id="req-unpause", id=s.id)
    )
    await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert f.driver("h2").describe(s.id) == PowerState.RUNNING


async def test_a_live_migration_of_a_stopped_server_is_a_conflict(two_hosts: Fleet) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.servers.StopServer(servers_pb2.StopServerRequest(request_id="req-stop", id=s.id))
    await wait_status(f, s.id, S.SERVER_STATUS_SHUTOFF)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await live_migrate(f, s.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await claims(f) == {s.id: "h1"}


async def test_a_live_migration_whose_destination_dies_leaves_the_server_running_at_its_source(
    pg_url: str, fresh_nats: NatsServerProcess, tmp_path: Path
) -> None:
    async with fleet(pg_url, fresh_nats, tmp_path, agents=("h1",)) as f:
        s = await boot(f)
        mig = await live_migrate(f, s.id)

        async def migrating() -> bool:
            got = await server(f, s.id)
            return got.task_state == servers_pb2.TASK_STATE_MIGRATING

        await eventually(migrating, MOVE_S)
        assert (await server(f, s.id)).status == S.SERVER_STATUS_MIGRATING
        assert await claims(f) == {s.id: "h2", mig.uuid: "h1"}
        f.h.scheduler.stop_heartbeats("h2")
        assert await MoveSweeper(f.h.conductor).sweep() == 1
        back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
        assert back.host == "h1"
        assert f.driver("h1").describe(s.id) == PowerState.RUNNING
        assert await claims(f) == {s.id: "h1"}
        await assert_usage_is_the_sum_of_allocations(f)
        assert (await migration(f, s.id)).status == "error"


async def test_a_confirm_whose_source_host_is_down_settles_at_once(two_hosts: Fleet) -> None:
    f = two_hosts
    s = await boot(f)
    await resize(f, s.id)
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    f.h.scheduler.stop_heartbeats("h1")
    await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=s.id))
    done = await server(f, s.id)  # settled by the call itself: nobody to wait for
    assert (done.status, done.host) == (S.SERVER_STATUS_ACTIVE, "h2")
    assert await claims(f) == {s.id: "h2"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration(f, s.id)).status == "confirmed"


async def test_a_revert_whose_destination_is_down_goes_back_to_the_source_without_it(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await resize(f, s.id)
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    f.h.scheduler.stop_heartbeats("h2")
    await f.migrations.RevertResize(migrations_pb2.RevertResizeRequest(id=s.id))
    back = await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
    assert (back.host, back.flavor.id) == ("h1", "1")
    assert f.driver("h1").describe(s.id) == PowerState.RUNNING
    assert await claims(f) == {s.id: "h1"}
    await assert_usage_is_the_sum_of_allocations(f)
    assert (await migration(f, s.id)).status == "reverted"


async def test_a_locked_server_is_moved_only_by_a_caller_who_may_override_the_lock(
    two_hosts: Fleet,
) -> None:
    f = two_hosts
    s = await boot(f)
    await f.h.servers.LockServer(servers_pb2.LockServerRequest(request_id="req-lock", id=s.id))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await resize(f, s.id)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "locked" in (err.value.details() or "")
    assert await claims(f) == {s.id: "h1"}
    await f.migrations.ResizeServer(
        migrations_pb2.ResizeServerRequest(
            request_id="req-admin-resize", id=s.id, flavor_id="2", override_lock=True
        )
    )
    await wait_status(f, s.id, S.SERVER_STATUS_VERIFY_RESIZE)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await f.migrations.ConfirmResize(migrations_pb2.ConfirmResizeRequest(id=s.id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await f.migrations.ConfirmResize(
        migrations_pb2.ConfirmResizeRequest(id=s.id, override_lock=True)
    )
    await wait_status(f, s.id, S.SERVER_STATUS_ACTIVE)
