"""Pause, unpause, suspend, resume, lock and unlock through the conductor: the state rules,
the commands on NATS, the agent's answers and the instance actions."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from sqlalchemy import select, update

from controlplane.db.models import Instance
from controlplane.runtime.natsserver import NatsServerProcess
from tests.conductor.conftest import (
    Agent,
    Harness,
    conductor_config,
    harness,
    running_workers,
)
from tests.conductor.test_flow import K, S, active_server, server, wait_for

T = servers_pb2


async def _answer(agent: Agent, sid: str, verb: str, power: int, ok: bool = True) -> None:
    got, data = await agent.next_command()
    assert got == verb
    cmd = {
        "pause": agent_bus_pb2.PauseInstanceCommand,
        "unpause": agent_bus_pb2.UnpauseInstanceCommand,
        "suspend": agent_bus_pb2.SuspendInstanceCommand,
        "resume": agent_bus_pb2.ResumeInstanceCommand,
    }[verb].FromString(data)
    assert cmd.instance_id == sid
    assert cmd.request_id.startswith(f"{verb}-{sid}-")
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED if ok else K.INSTANCE_EVENT_KIND_ACTION_FAILED,
        action=verb,
        power_state=power,
    )


async def test_pause_then_unpause_passes_through_their_tasks_and_records_both_actions(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)

    await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p1"))
    pausing = await server(stack, sid)
    assert pausing.task_state == T.TASK_STATE_PAUSING
    assert pausing.status == S.SERVER_STATUS_ACTIVE
    await _answer(agent, sid, "pause", agent_bus_pb2.POWER_STATE_PAUSED)
    paused = await wait_for(
        stack, sid, lambda s: s.status == S.SERVER_STATUS_PAUSED and not s.task_state
    )
    assert paused.vm_state == T.VM_STATE_PAUSED
    assert paused.power_state == agent_bus_pb2.POWER_STATE_PAUSED

    await stack.servers.UnpauseServer(T.UnpauseServerRequest(id=sid, request_id="u1"))
    assert (await server(stack, sid)).task_state == T.TASK_STATE_UNPAUSING
    await _answer(agent, sid, "unpause", agent_bus_pb2.POWER_STATE_RUNNING)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE and not s.task_state)

    action = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="p1")
    )
    assert action.action.action == "pause"
    assert [e.event for e in action.action.events] == ["compute_pause_instance"]
    assert action.action.events[0].result == "Success"
    listed = await stack.servers.ListInstanceActions(T.ListInstanceActionsRequest(id=sid))
    assert [a.action for a in listed.actions][:2] == ["unpause", "pause"]


async def test_suspend_then_resume_settle_on_suspended_and_active(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.SuspendServer(T.SuspendServerRequest(id=sid, request_id="s1"))
    assert (await server(stack, sid)).task_state == T.TASK_STATE_SUSPENDING
    await _answer(agent, sid, "suspend", agent_bus_pb2.POWER_STATE_SUSPENDED)
    suspended = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SUSPENDED)
    assert suspended.vm_state == T.VM_STATE_SUSPENDED
    assert suspended.power_state == agent_bus_pb2.POWER_STATE_SUSPENDED

    await stack.servers.ResumeServer(T.ResumeServerRequest(id=sid, request_id="r1"))
    assert (await server(stack, sid)).task_state == T.TASK_STATE_RESUMING
    await _answer(agent, sid, "resume", agent_bus_pb2.POWER_STATE_RUNNING)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE and not s.task_state)


async def test_a_failed_unpause_leaves_the_server_paused_as_the_host_reports(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p1"))
    await _answer(agent, sid, "pause", agent_bus_pb2.POWER_STATE_PAUSED)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_PAUSED)
    await stack.servers.UnpauseServer(T.UnpauseServerRequest(id=sid, request_id="u1"))
    await _answer(agent, sid, "unpause", agent_bus_pb2.POWER_STATE_PAUSED, ok=False)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_PAUSED and not s.task_state)


@pytest.mark.parametrize(
    ("first", "refused"),
    [
        ("active", "unpause"),
        ("active", "resume"),
        ("paused", "pause"),
        ("paused", "suspend"),
        ("paused", "resume"),
        ("suspended", "pause"),
        ("suspended", "unpause"),
        ("suspended", "suspend"),
    ],
)
async def test_an_action_the_state_forbids_is_refused_naming_the_state(
    stack: Harness, first: str, refused: str
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    if first == "paused":
        await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p1"))
        await _answer(agent, sid, "pause", agent_bus_pb2.POWER_STATE_PAUSED)
        await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_PAUSED)
    elif first == "suspended":
        await stack.servers.SuspendServer(T.SuspendServerRequest(id=sid, request_id="s1"))
        await _answer(agent, sid, "suspend", agent_bus_pb2.POWER_STATE_SUSPENDED)
        await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SUSPENDED)
    before = await server(stack, sid)
    rpc = {
        "pause": (stack.servers.PauseServer, T.PauseServerRequest),
        "unpause": (stack.servers.UnpauseServer, T.UnpauseServerRequest),
        "suspend": (stack.servers.SuspendServer, T.SuspendServerRequest),
        "resume": (stack.servers.ResumeServer, T.ResumeServerRequest),
    }[refused]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await rpc[0](rpc[1](id=sid, request_id="x"))  # type: ignore[operator]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == (
        f"Cannot '{refused}' instance {sid} while it is in vm_state {first}"
    )
    after = await server(stack, sid)
    assert (after.vm_state, after.task_state) == (before.vm_state, before.task_state)


async def test_an_action_under_way_refuses_a_pause_and_a_retried_pause_is_a_no_op(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p1"))
    await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.SuspendServer(T.SuspendServerRequest(id=sid, request_id="s1"))
    assert info.value.details() == (
        f"Cannot 'suspend' instance {sid} while it is in task_state pausing"
    )
    assert (await agent.next_command())[0] == "pause"
    with pytest.raises(TimeoutError):
        await agent.next_command(within=0.5)


async def test_a_locked_server_refuses_actions_and_delete_unless_overridden(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.LockServer(
        T.LockServerRequest(id=sid, request_id="l1", locked_reason="maintenance")
    )
    locked = await server(stack, sid)
    assert (locked.locked, locked.locked_reason, locked.locked_by) == (
        True,
        "maintenance",
        "owner",
    )
    refusals = [
        stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="a")),
        stack.servers.StopServer(T.StopServerRequest(id=sid, request_id="b")),
        stack.servers.RebootServer(T.RebootServerRequest(id=sid, request_id="c")),
        stack.servers.DeleteServer(T.DeleteServerRequest(id=sid, request_id="d")),
        stack.servers.SetServerMetadata(
            T.SetServerMetadataRequest(id=sid, request_id="e", metadata={"a": "b"})
        ),
    ]
    for call in refusals:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == f"Instance {sid} is locked"
    assert (await server(stack, sid)).task_state == T.TASK_STATE_UNSPECIFIED
    # An admin's request overrides the lock.
    await stack.servers.PauseServer(
        T.PauseServerRequest(id=sid, request_id="p-admin", override_lock=True)
    )
    assert (await agent.next_command())[0] == "pause"

    await stack.servers.UnlockServer(T.UnlockServerRequest(id=sid, request_id="u1"))
    unlocked = await server(stack, sid)
    assert (unlocked.locked, unlocked.locked_reason, unlocked.locked_by) == (False, "", "")
    listed = await stack.servers.ListInstanceActions(T.ListInstanceActionsRequest(id=sid))
    assert [a.action for a in listed.actions][:3] == ["unlock", "pause", "lock"]


async def test_the_locked_filter_lists_only_locked_or_unlocked_servers(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    await stack.servers.LockServer(T.LockServerRequest(id=sid, request_id="l1"))
    locked = await stack.servers.ListServers(T.ListServersRequest(locked=True))
    assert [s.id for s in locked.servers] == [sid]
    unlocked = await stack.servers.ListServers(T.ListServersRequest(locked=False))
    assert sid not in [s.id for s in unlocked.servers]


async def test_an_operator_resets_a_server_stuck_in_a_task_to_active_or_error(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    await stack.servers.StopServer(servers_pb2.StopServerRequest(id=sid, request_id="stop-1"))
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_POWERING_OFF

    reset = await stack.servers.ResetServerState(
        servers_pb2.ResetServerStateRequest(request_id="r1", id=sid, state="error")
    )
    assert (reset.server.status, reset.server.task_state) == (
        S.SERVER_STATUS_ERROR,
        servers_pb2.TASK_STATE_UNSPECIFIED,
    )
    again = await stack.servers.ResetServerState(
        servers_pb2.ResetServerStateRequest(request_id="r2", id=sid, state="active")
    )
    assert again.server.status == S.SERVER_STATUS_ACTIVE

    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.servers.ResetServerState(
            servers_pb2.ResetServerStateRequest(request_id="r3", id=sid, state="building")
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.servers.ResetServerState(
            servers_pb2.ResetServerStateRequest(
                request_id="r4", id="00000000-0000-0000-0000-000000000000", state="error"
            )
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_inject_network_info_sends_its_host_the_command_and_changes_nothing_else(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    before = await server(stack, sid)

    await stack.servers.InjectNetworkInfo(T.InjectNetworkInfoRequest(id=sid, request_id="n1"))
    verb, data = await agent.next_command()
    assert verb == "inject_network_info"
    cmd = agent_bus_pb2.InjectNetworkInfoCommand.FromString(data)
    assert (cmd.instance_id, cmd.request_id) == (sid, f"inject_network_info-{sid}-n1")
    after = await server(stack, sid)
    assert (after.status, after.task_state) == (before.status, T.TASK_STATE_UNSPECIFIED)
    listed = await stack.servers.ListInstanceActions(T.ListInstanceActionsRequest(id=sid))
    assert [a.action for a in listed.actions] == ["create"]
    # The host's answer, whatever it is, leaves the server as it was.
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_FAILED,
        action="inject_network_info",
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await stack.servers.LockServer(T.LockServerRequest(id=sid, request_id="l1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.InjectNetworkInfo(T.InjectNetworkInfoRequest(id=sid, request_id="n2"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await stack.servers.InjectNetworkInfo(
        T.InjectNetworkInfoRequest(id=sid, request_id="n3", override_lock=True)
    )
    assert (await agent.next_command())[0] == "inject_network_info"
    settled = await server(stack, sid)
    assert (settled.status, settled.task_state) == (S.SERVER_STATUS_ACTIVE, 0)

    await stack.servers.UnlockServer(T.UnlockServerRequest(id=sid, request_id="u1"))
    await stack.servers.DeleteServer(T.DeleteServerRequest(id=sid, request_id="d1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.InjectNetworkInfo(T.InjectNetworkInfoRequest(id=sid, request_id="n4"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "being deleted" in (info.value.details() or "")


async def test_inject_network_info_waits_for_a_transaction_holding_the_server_s_row(
    stack: Harness,
) -> None:
    # Its command's sequence must follow every command decided before it: a command
    # queued while another transaction holds the row would overtake it, and the agent
    # would then skip the earlier one as stale.
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    async with stack.sessions() as holder:
        await holder.execute(select(Instance.id).where(Instance.uuid == sid).with_for_update())
        injecting = asyncio.ensure_future(
            stack.servers.InjectNetworkInfo(T.InjectNetworkInfoRequest(id=sid, request_id="n1"))
        )
        await asyncio.sleep(1.0)
        assert not injecting.done()
        await holder.rollback()
    await asyncio.wait_for(injecting, 10)
    assert (await agent.next_command())[0] == "inject_network_info"


async def test_a_server_still_holding_a_shelve_snapshot_is_deleted_for_real_and_names_it(
    pg_url: str, fresh_nats: NatsServerProcess
) -> None:
    # With soft delete on, the reclaim would delete the server later, in the conductor,
    # which cannot reach the snapshot's bytes: the image would be left behind.
    cfg = conductor_config(reclaim_instance_interval=3600)
    async with harness(pg_url, cfg) as h, running_workers(h, fresh_nats.url):
        await h.scheduler.add_host("host-a")
        sid, agent = await active_server(h)
        # An unshelve from the snapshot that failed on its host.
        async with h.sessions() as s:
            await s.execute(
                update(Instance)
                .where(Instance.uuid == sid)
                .values(vm_state="error", shelved_image_id="img-shelved")
            )
            await s.commit()
        reply = await h.servers.DeleteServer(T.DeleteServerRequest(id=sid, request_id="d1"))
        assert reply.shelved_image_id == "img-shelved"
        assert (await server(h, sid)).task_state == T.TASK_STATE_DELETING
        assert (await agent.next_command())[0] == "delete"
