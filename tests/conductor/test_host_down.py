"""Servers on a host that went down: local delete, and builds stranded there."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, servers_pb2
from sqlalchemy import update

from controlplane.conductor.stranded import StrandedBuilds
from controlplane.db.models import Instance, Service
from tests.conductor.conftest import Agent, Harness, conductor_config
from tests.conductor.factories import add, make_service
from tests.conductor.test_flow import S, active_server, boot, server, wait_for

K = agent_bus_pb2.InstanceEventKind


def _long_ago(h: Harness) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=h.conductor.cfg.scheduler.service_down_time + 5)


async def test_deleting_a_server_whose_host_is_down_deletes_it_at_once_and_still_tells_the_host(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await add(stack.sessions, make_service("host-a", last_seen_up=_long_ago(stack)))
    stack.scheduler.stop_heartbeats("host-a")  # the scheduler owns liveness

    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))

    gone = await server(stack, sid, include_deleted=True)
    assert gone.deleted
    assert gone.status == S.SERVER_STATUS_DELETED
    assert gone.HasField("terminated_at")
    assert stack.scheduler.releases[(sid, "host-a")] == 1
    assert sid not in await stack.scheduler.claims()
    action = await stack.servers.GetInstanceAction(
        servers_pb2.GetInstanceActionRequest(id=sid, request_id="d1")
    )
    assert action.action.action == "delete"
    assert [(e.event, e.result) for e in action.action.events] == [
        ("conductor_local_delete", "Success")
    ]
    # The host still gets the command, for when its agent returns.
    verb, data = await agent.next_command()
    assert verb == "delete"
    assert agent_bus_pb2.DeleteInstanceCommand.FromString(data).instance_id == sid

    # The agent comes back and answers; nothing is released or changed a second time.
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d2"))
    assert stack.scheduler.releases[(sid, "host-a")] == 1
    assert (await server(stack, sid, include_deleted=True)).deleted


async def test_a_delete_waiting_for_a_host_that_then_went_down_completes_when_asked_again(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    service = make_service("host-a")
    await add(stack.sessions, service)
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    assert (await server(stack, sid)).task_state == servers_pb2.TASK_STATE_DELETING

    await stack.fleet.UpdateService(
        fleet_pb2.UpdateServiceRequest(request_id="f1", id=service.uuid, forced_down=True)
    )
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d2"))

    gone = await server(stack, sid, include_deleted=True)
    assert gone.deleted
    assert stack.scheduler.releases[(sid, "host-a")] == 1


async def test_deleting_a_server_whose_host_is_up_still_waits_for_the_agent(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    await add(stack.sessions, make_service("host-a"))
    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    deleting = await server(stack, sid)
    assert deleting.task_state == servers_pb2.TASK_STATE_DELETING
    assert not deleting.deleted
    assert stack.scheduler.releases[(sid, "host-a")] == 0


async def _stranded_on_a_down_host(stack: Harness) -> tuple[str, Agent, str]:
    """A server spawning on a host whose heartbeats stopped; returns it, the host's agent
    and the other host."""
    await stack.scheduler.add_host("host-a")
    await stack.scheduler.add_host("host-b")
    sid, agent, _ = await boot(stack)
    other = "host-b" if agent.host == "host-a" else "host-a"
    await add(
        stack.sessions,
        make_service(agent.host, last_seen_up=_long_ago(stack)),
        make_service(other),
    )
    stack.scheduler.stop_heartbeats(agent.host)  # the scheduler owns liveness
    return sid, agent, other


async def test_a_build_stranded_on_a_down_host_is_rescheduled_by_exactly_one_conductor(
    stack: Harness,
) -> None:
    sid, agent, other = await _stranded_on_a_down_host(stack)

    # Two conductors notice it at the same moment; only one takes it over.
    passes = [StrandedBuilds(stack.conductor), StrandedBuilds(stack.conductor)]
    settled = await asyncio.gather(*(p.run_once() for p in passes))
    assert sorted(settled) == [0, 1]

    moved = await wait_for(stack, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    assert (moved.host, moved.attempts) == (other, 2)
    assert stack.scheduler.releases[(sid, agent.host)] == 1
    assert (await stack.scheduler.claims())[sid] == other
    # The dead host gets a delete for whatever it built before it went quiet.
    verb, data = await agent.next_command()
    assert verb == "delete"
    assert agent_bus_pb2.DeleteInstanceCommand.FromString(data).instance_id == sid
    # A later pass finds nothing more to do.
    assert await passes[0].run_once() == 0


async def test_a_late_build_success_from_the_host_that_went_down_changes_nothing(
    stack: Harness,
) -> None:
    sid, agent, other = await _stranded_on_a_down_host(stack)
    assert await StrandedBuilds(stack.conductor).run_once() == 1
    await wait_for(stack, sid, lambda s: s.host == other)
    assert (await agent.next_command())[0] == "delete"

    # The host returns and reports the build it had finished; then the delete it was sent.
    await agent.report(sid, K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, attempt=1)
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    assert stack.js is not None
    survivor = Agent(stack.js, other)
    assert (await survivor.build_command()).attempt == 2
    await survivor.report(sid, K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED, attempt=2)
    active = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert (active.host, active.attempts, active.deleted) == (other, 2, False)
    assert stack.scheduler.releases[(sid, agent.host)] == 1
    assert (await stack.scheduler.claims())[sid] == other


async def test_a_stranded_build_with_no_attempts_left_ends_in_error_naming_the_host(
    stack: Harness,
) -> None:
    sid, agent, _ = await _stranded_on_a_down_host(stack)
    one_attempt = dataclasses.replace(stack.conductor, cfg=conductor_config(max_build_attempts=1))
    assert await StrandedBuilds(one_attempt).run_once() == 1

    failed = await server(stack, sid)
    assert failed.status == S.SERVER_STATUS_ERROR
    assert failed.fault.code == 500
    assert f"Compute host {agent.host} went down" in failed.fault.message
    assert stack.scheduler.releases[(sid, agent.host)] == 1
    assert sid not in await stack.scheduler.claims()


async def test_a_takeover_left_half_done_by_a_dead_conductor_is_finished_by_the_next_pass(
    stack: Harness,
) -> None:
    sid, agent, other = await _stranded_on_a_down_host(stack)
    # What a conductor that died right after taking the build over leaves behind; the host
    # has come back up meanwhile.
    async with stack.sessions() as s, s.begin():
        await s.execute(
            update(Instance)
            .where(Instance.uuid == sid)
            .values(task_state="scheduling", updated_at=_long_ago(stack))
        )
        await s.execute(
            update(Service).where(Service.host == agent.host).values(last_seen_up=datetime.now(UTC))
        )
    stack.scheduler.heartbeat(agent.host)
    assert await StrandedBuilds(stack.conductor).run_once() == 1
    moved = await wait_for(stack, sid, lambda s: s.task_state == servers_pb2.TASK_STATE_SPAWNING)
    assert (moved.host, moved.attempts) == (other, 2)
    assert stack.scheduler.releases[(sid, agent.host)] == 1


async def test_a_host_the_scheduler_holds_down_gets_a_local_delete_whatever_its_service_row_says(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    # The conductor's own record still shows a fresh heartbeat; the scheduler says down.
    await add(stack.sessions, make_service("host-a"))
    stack.scheduler.stop_heartbeats("host-a")

    await stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id="d1"))

    assert (await server(stack, sid, include_deleted=True)).deleted
    assert stack.scheduler.releases[(sid, "host-a")] == 1


async def test_a_delete_storm_asks_the_scheduler_which_hosts_are_down_once_not_per_delete(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    ids = [(await active_server(stack, name=f"vm-{i}"))[0] for i in range(6)]
    before = stack.scheduler.calls["ListHosts"] + stack.scheduler.calls["GetHost"]

    await asyncio.gather(
        *(
            stack.servers.DeleteServer(servers_pb2.DeleteServerRequest(id=sid, request_id=f"d{i}"))
            for i, sid in enumerate(ids)
        )
    )

    asked = stack.scheduler.calls["ListHosts"] + stack.scheduler.calls["GetHost"] - before
    assert asked == 1, asked
    states = [(await server(stack, sid)).task_state for sid in ids]
    assert states == [servers_pb2.TASK_STATE_DELETING] * len(ids)
