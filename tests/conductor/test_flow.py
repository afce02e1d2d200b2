"""The conductor's whole path: create → schedule (Loom's real scheduler) → build command on
NATS → agent events on NATS → server state. The relay and both workers really run."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from sqlalchemy import func, select

from controlplane.db.models import OutboxMessage
from tests.conductor.conftest import RELAY_POLL_S, STEP_S, Agent, Harness, eventually
from tests.conductor.test_create import create_request
from tests.support import polling

K = agent_bus_pb2.InstanceEventKind
S = servers_pb2.ServerStatus


async def server(h: Harness, sid: str, **kw: Any) -> servers_pb2.Server:
    resp = await h.servers.GetServer(servers_pb2.GetServerRequest(id=sid, **kw))
    return resp.server


async def wait_for(h: Harness, sid: str, check: Any, within: float = STEP_S) -> servers_pb2.Server:
    async def probe() -> servers_pb2.Server | None:
        s = await server(h, sid, include_deleted=True)
        return s if check(s) else None

    found = await eventually(probe, within)
    assert found is not None, await server(h, sid, include_deleted=True)
    return found


async def boot(
    h: Harness, name: str = "web"
) -> tuple[str, Agent, agent_bus_pb2.BuildInstanceCommand]:
    """Creates one server and returns it with the agent of the host it landed on."""
    assert h.js is not None
    resp = await h.servers.CreateServers(create_request(request_id=f"req-{name}", name=name))
    sid = resp.servers[0].id
    placed = await wait_for(h, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    agent = Agent(h.js, placed.host)
    return sid, agent, await agent.build_command()


async def active_server(h: Harness, name: str = "web") -> tuple[str, Agent]:
    sid, agent, cmd = await boot(h, name)
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=cmd.attempt,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    return sid, agent


async def test_a_server_is_scheduled_built_and_becomes_active(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a", zone="zone-1")
    sid, agent, cmd = await boot(stack)
    assert agent.host == "host-a"
    assert cmd.attempt == 1
    assert cmd.spec.instance_id == sid
    assert cmd.spec.instance_name.startswith("instance-")
    assert cmd.spec.image.hash_value == "ab" * 64
    assert cmd.spec.image.properties["hw_disk_bus"] == "virtio"
    assert cmd.spec.memory_mb == 512
    # What the config drive's meta_data.json needs beyond the instance's own fields.
    assert (cmd.spec.availability_zone, cmd.spec.launch_index) == ("zone-1", 0)
    building = await server(stack, sid)
    assert building.status == S.SERVER_STATUS_BUILD
    assert building.availability_zone == "zone-1"
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=1,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    done = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert done.task_state == servers_pb2.TASK_STATE_UNSPECIFIED
    assert done.power_state == agent_bus_pb2.POWER_STATE_RUNNING
    assert done.HasField("launched_at")
    assert stack.scheduler.decisions == 1


async def test_a_config_drive_asked_for_at_create_reaches_the_agents_build_command(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    assert stack.js is not None
    resp = await stack.servers.CreateServers(
        create_request(request_id="req-cd", name="cd", config_drive=True)
    )
    sid = resp.servers[0].id
    placed = await wait_for(stack, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    cmd = await Agent(stack.js, placed.host).build_command()
    assert cmd.spec.config_drive is True


async def test_a_build_failing_on_every_host_ends_in_error_with_each_claim_released_once(
    stack: Harness,
) -> None:
    for name in ("host-a", "host-b", "host-c"):
        await stack.scheduler.add_host(name)
    sid, agent, cmd = await boot(stack)
    assert stack.js is not None
    tried = []
    for attempt in (1, 2, 3):
        assert cmd.attempt == attempt
        tried.append(agent.host)
        await agent.report(
            sid,
            K.INSTANCE_EVENT_KIND_BUILD_FAILED,
            attempt=attempt,
            fault={"code": 500, "message": f"disk full on {agent.host}"},
        )
        if attempt == 3:
            break
        moved = await wait_for(stack, sid, lambda s, a=attempt: s.attempts == a + 1)
        agent = Agent(stack.js, moved.host)
        cmd = await agent.build_command()
    failed = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert sorted(tried) == ["host-a", "host-b", "host-c"]
    assert failed.fault.code == 500
    assert "maximum number of build attempts" in failed.fault.message
    assert "disk full on" in failed.fault.message
    assert failed.fault.HasField("created_at")
    assert failed.host == ""
    assert dict(stack.scheduler.releases) == {(sid, h): 1 for h in tried}
    assert await stack.scheduler.claims() == {}


async def test_a_failed_build_whose_alternates_are_gone_is_rescheduled(stack: Harness) -> None:
    for name in ("host-a", "host-b", "host-c"):
        await stack.scheduler.add_host(name)
    sid, agent, _ = await boot(stack)
    assert stack.js is not None
    # Every alternate refuses the claim, so the conductor must ask the scheduler afresh,
    # which finds the host that joined after the first placement.
    for other in ("host-a", "host-b", "host-c"):
        if other != agent.host:
            await stack.scheduler.set_enabled(other, False, "no room for the retry")
    await stack.scheduler.add_host("host-late")
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=1)
    moved = await wait_for(stack, sid, lambda s: s.attempts == 2)
    assert moved.host == "host-late"
    assert stack.scheduler.decisions == 2
    second = await Agent(stack.js, moved.host).build_command()
    assert second.attempt == 2


async def test_a_redelivered_build_failure_changes_nothing_more(stack: Harness) -> None:
    for name in ("host-a", "host-b"):
        await stack.scheduler.add_host(name)
    sid, agent, _ = await boot(stack)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=1)
    moved = await wait_for(stack, sid, lambda s: s.attempts == 2)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_FAILED, attempt=1)  # a stale repeat
    assert stack.js is not None
    await Agent(stack.js, moved.host).build_command()
    after = await server(stack, sid)
    assert after.attempts == 2
    assert after.host == moved.host
    assert stack.scheduler.releases[(sid, agent.host)] == 1


async def test_no_valid_host_puts_the_server_in_error_saying_which_filters_removed_hosts(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("tiny", memory_mb=128)
    resp = await stack.servers.CreateServers(create_request())
    failed = await wait_for(stack, resp.servers[0].id, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert failed.fault.code == 500
    assert failed.fault.message.startswith("No valid host was found.")
    assert "1 removed by capacity" in failed.fault.message
    actions = await stack.servers.GetInstanceAction(
        servers_pb2.GetInstanceActionRequest(id=failed.id, request_id="req-1")
    )
    assert [e.result for e in actions.action.events] == ["Error"]


async def test_an_unreachable_scheduler_delays_scheduling_without_losing_it(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    await stack.scheduler.stop()
    resp = await stack.servers.CreateServers(create_request())
    sid = resp.servers[0].id
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_SCHEDULING
    await stack.scheduler.start()
    placed = await wait_for(
        stack,
        sid,
        lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING,
        polling.after_scheduler_returns_s(RELAY_POLL_S),
    )
    assert placed.host == "host-a"


async def test_deleting_a_server_before_it_has_a_host_deletes_it_at_once(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    await stack.scheduler.stop()  # keeps it unscheduled
    resp = await stack.servers.CreateServers(create_request())
    sid = resp.servers[0].id
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    gone = await server(stack, sid, include_deleted=True)
    assert gone.status == S.SERVER_STATUS_DELETED
    assert gone.deleted
    await stack.scheduler.start()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await server(stack, sid)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    # The queued schedule message finds it deleted and places nothing.
    async def outbox_empty() -> bool:
        async with stack.sessions() as s:
            return (await s.execute(select(func.count(OutboxMessage.id)))).scalar_one() == 0

    assert await eventually(outbox_empty)
    assert await stack.scheduler.claims() == {}
    # Deleting again succeeds and changes nothing.
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d2"))


async def test_deleting_mid_build_sends_a_delete_and_the_late_build_success_is_ignored(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent, _ = await boot(stack)
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    deleting = await server(stack, sid)
    assert deleting.task_state == servers_pb2.TASK_STATE_DELETING
    verb, data = await agent.next_command()
    assert verb == "delete"
    assert agent_bus_pb2.DeleteInstanceCommand.FromString(data).instance_id == sid
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, attempt=1)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    gone = await wait_for(stack, sid, lambda s: s.deleted)
    assert gone.status == S.SERVER_STATUS_DELETED
    assert gone.HasField("terminated_at")
    assert stack.scheduler.releases[(sid, "host-a")] == 1


async def test_a_build_that_comes_back_after_its_delete_ran_is_sent_a_delete_of_its_own(
    stack: Harness,
) -> None:
    """The user's delete went to the host and ran; then a build of the same server that
    was still in hand there finished and reported the domain running. The clean-up delete
    must reach the host, not be taken by JetStream for a resend of the user's delete."""
    await stack.scheduler.add_host("host-a")
    sid, agent, _ = await boot(stack)
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    verb, _ = await agent.next_command()
    assert verb == "delete"
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await wait_for(stack, sid, lambda s: s.deleted)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, attempt=1)
    verb, data = await agent.next_command()
    assert verb == "delete"
    assert agent_bus_pb2.DeleteInstanceCommand.FromString(data).instance_id == sid


async def test_deleting_an_active_server_finishes_when_the_agent_reports_it_gone(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    verb, _ = await agent.next_command()
    assert verb == "delete"
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)  # redelivered
    gone = await wait_for(stack, sid, lambda s: s.deleted)
    assert gone.vm_state == servers_pb2.VM_STATE_DELETED
    assert stack.scheduler.releases[(sid, "host-a")] == 1
    action = await stack.servers.GetInstanceAction(
        servers_pb2.GetInstanceActionRequest(id=sid, request_id="d1")
    )
    assert action.action.action == "delete"


async def test_stop_start_and_reboot_set_their_tasks_and_settle_on_the_agents_answer(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)

    await stack.servers.StopServer(servers_pb2.StopServerRequest(id=sid, request_id="s1"))
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_POWERING_OFF
    verb, data = await agent.next_command()
    assert verb == "stop"
    assert agent_bus_pb2.StopInstanceCommand.FromString(data).instance_id == sid
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="stop",
        power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
    )
    await wait_for(
        stack,
        sid,
        lambda s: (
            s.status == S.SERVER_STATUS_SHUTOFF
            and s.task_state == servers_pb2.TASK_STATE_UNSPECIFIED
        ),
    )

    await stack.servers.StartServer(servers_pb2.StartServerRequest(id=sid, request_id="s2"))
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_POWERING_ON
    assert (await agent.next_command())[0] == "start"
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="start",
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(
        stack,
        sid,
        lambda s: (
            s.status == S.SERVER_STATUS_ACTIVE
            and s.task_state == servers_pb2.TASK_STATE_UNSPECIFIED
        ),
    )

    await stack.servers.RebootServer(servers_pb2.RebootServerRequest(id=sid, request_id="r1"))
    assert (await server(stack, sid)).status == S.SERVER_STATUS_REBOOT
    # A hard reboot may take over a soft one under way.
    await stack.servers.RebootServer(
        servers_pb2.RebootServerRequest(
            id=sid, request_id="r2", reboot_type=agent_bus_pb2.REBOOT_TYPE_HARD
        )
    )
    assert (await server(stack, sid)).status == S.SERVER_STATUS_HARD_REBOOT
    verbs = [(await agent.next_command())[0], (await agent.next_command())[0]]
    assert verbs == ["reboot", "reboot"]
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="reboot",
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    listed = await stack.servers.ListInstanceActions(servers_pb2.ListInstanceActionsRequest(id=sid))
    assert [a.action for a in listed.actions][:4] == ["reboot", "reboot", "start", "stop"]


async def test_a_conflicting_action_is_refused_and_changes_nothing(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.StartServer(servers_pb2.StartServerRequest(id=sid, request_id="x"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == f"Cannot 'start' instance {sid} while it is in vm_state active"
    await stack.servers.StopServer(servers_pb2.StopServerRequest(id=sid, request_id="s1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.RebootServer(servers_pb2.RebootServerRequest(id=sid, request_id="y"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == (
        f"Cannot 'reboot' instance {sid} while it is in task_state powering-off"
    )
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_POWERING_OFF
    # The same stop retried is accepted as already done.
    await stack.servers.StopServer(servers_pb2.StopServerRequest(id=sid, request_id="s1"))


async def test_an_active_server_found_shut_down_becomes_shutoff(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED,
        power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
    )
    off = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHUTOFF)
    assert off.power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN


async def test_a_missing_domain_puts_the_server_in_error_with_a_fault(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_MISSING)
    failed = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert "missing" in failed.fault.message
