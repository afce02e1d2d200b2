"""Shelve, shelve_offload and unshelve through the conductor, with Loom's real scheduler:
an offloaded server holds no allocation; unshelving claims one again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2
from sqlalchemy import select, update

from controlplane.conductor.shelving import ShelvedOffloader
from controlplane.conductor.stranded import StrandedBuilds
from controlplane.db.models import Allocation, Instance
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from tests.conductor.conftest import Agent, Harness, conductor_config, harness, running_workers
from tests.conductor.factories import make_image
from tests.conductor.test_flow import K, S, active_server, server, wait_for

T = servers_pb2


@pytest.fixture
async def keeping(pg_url: str, fresh_nats: NatsServerProcess) -> AsyncIterator[Harness]:
    """A conductor that never offloads on its own (shelved_offload_time -1)."""
    cfg = conductor_config(shelved_offload_time=-1)
    async with harness(pg_url, cfg) as h, running_workers(h, fresh_nats.url):
        yield h


async def _allocation(h: Harness, sid: str) -> Allocation | None:
    async with h.sessions() as session:
        found: Allocation | None = (
            await session.execute(select(Allocation).where(Allocation.consumer_id == sid))
        ).scalar_one_or_none()
        return found


async def _answer(agent: Agent, sid: str, verb: str, power: int) -> str:
    """Takes the next command (which must be `verb`) and answers it as done; returns the
    command's request id."""
    got, data = await agent.next_command()
    assert got == verb
    command = {
        "shelve": agent_bus_pb2.ShelveInstanceCommand,
        "shelve_offload": agent_bus_pb2.ShelveOffloadInstanceCommand,
        "unshelve": agent_bus_pb2.UnshelveInstanceCommand,
    }[verb].FromString(data)
    assert command.instance_id == sid
    event = agent_bus_pb2.InstanceEvent(
        request_id=command.request_id,
        instance_id=sid,
        host=agent.host,
        kind=K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        power_state=power,  # type: ignore[arg-type]
        action=verb,
    )
    await agent.js.publish(
        bus.instance_event_subject(agent.host),
        event.SerializeToString(),
        headers={"Nats-Msg-Id": f"{command.request_id}:done"},
    )
    return str(command.request_id)


async def test_shelving_offloads_at_once_freeing_the_claim_and_unshelving_claims_again(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    held = await _allocation(stack, sid)
    assert held is not None
    assert (held.vcpus, held.memory_mb) == (1, 512)

    await stack.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    assert (await server(stack, sid)).task_state == T.TASK_STATE_SHELVING
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    # shelved_offload_time 0: the offload follows on its own.
    await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_SHELVING_OFFLOADING)
    offload_id = await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    assert "-auto-" in offload_id
    offloaded = await wait_for(
        stack, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED and not s.task_state
    )
    assert (offloaded.host, offloaded.node) == ("", "")
    assert offloaded.vm_state == T.VM_STATE_SHELVED_OFFLOADED
    assert await _allocation(stack, sid) is None
    shelve = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="sh1")
    )
    assert [e.event for e in shelve.action.events] == [
        "compute_shelve_instance",
        "compute_shelve_offload_instance",
    ]

    await stack.servers.UnshelveServer(T.UnshelveServerRequest(id=sid, request_id="un1"))
    build = await agent.build_command()
    assert build.spec.instance_id == sid
    assert build.attempt == 2
    assert (await _allocation(stack, sid)) is not None
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=2,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    active = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert active.host == "host-a"
    unshelve = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="un1")
    )
    assert [e.event for e in unshelve.action.events] == ["compute_unshelve_instance"]


async def test_a_shelved_server_keeps_its_host_until_offloaded_by_request(
    keeping: Harness,
) -> None:
    h = keeping
    await h.scheduler.add_host("host-a")
    sid, agent = await active_server(h)
    await h.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    shelved = await wait_for(
        h, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED and not s.task_state
    )
    assert shelved.host == "host-a"
    assert await _allocation(h, sid) is not None
    with pytest.raises(TimeoutError):
        await agent.next_command(within=0.5)
    # A zone or host is only for an offloaded server.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await h.servers.UnshelveServer(
            T.UnshelveServerRequest(id=sid, request_id="x", availability_zone="az")
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "must be SHELVED_OFFLOADED" in (info.value.details() or "")

    await h.servers.ShelveOffloadServer(T.ShelveOffloadServerRequest(id=sid, request_id="of1"))
    assert (await server(h, sid)).task_state == T.TASK_STATE_SHELVING_OFFLOADING
    await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)
    assert await _allocation(h, sid) is None
    actions = await h.servers.ListInstanceActions(T.ListInstanceActionsRequest(id=sid))
    assert [a.action for a in actions.actions][:2] == ["shelve_offload", "shelve"]


async def test_unshelving_a_server_still_on_its_host_powers_it_on_there(
    keeping: Harness,
) -> None:
    h = keeping
    await h.scheduler.add_host("host-a")
    sid, agent = await active_server(h)
    await h.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED and not s.task_state)
    await h.servers.UnshelveServer(T.UnshelveServerRequest(id=sid, request_id="un1"))
    assert (await server(h, sid)).task_state == T.TASK_STATE_UNSHELVING
    await _answer(agent, sid, "unshelve", agent_bus_pb2.POWER_STATE_RUNNING)
    active = await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert active.power_state == agent_bus_pb2.POWER_STATE_RUNNING


async def test_the_offload_timer_takes_over_servers_shelved_long_enough(
    pg_url: str, fresh_nats: NatsServerProcess
) -> None:
    cfg = conductor_config(shelved_offload_time=3600)
    async with harness(pg_url, cfg) as h, running_workers(h, fresh_nats.url):
        await h.scheduler.add_host("host-a")
        sid, agent = await active_server(h)
        await h.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
        await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
        await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED and not s.task_state)
        offloader = ShelvedOffloader(h.conductor)
        assert await offloader.run_once() == 0  # shelved just now
        async with h.sessions() as session:
            await session.execute(
                update(Instance)
                .where(Instance.uuid == sid)
                .values(shelved_at=datetime.now(UTC) - timedelta(hours=2))
            )
            await session.commit()
        assert await offloader.run_once() == 1
        assert await offloader.run_once() == 0  # taken over once
        await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
        await wait_for(h, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)
        assert await _allocation(h, sid) is None


async def test_an_unshelve_that_finds_no_host_leaves_the_server_offloaded(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_SHELVING_OFFLOADING)
    await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)

    await stack.servers.UnshelveServer(
        T.UnshelveServerRequest(id=sid, request_id="un1", host="no-such-host")
    )

    back = await wait_for(
        stack, sid, lambda s: s.vm_state == T.VM_STATE_SHELVED_OFFLOADED and not s.task_state
    )
    assert back.vm_state == T.VM_STATE_SHELVED_OFFLOADED
    assert await _allocation(stack, sid) is None
    unshelve = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="un1")
    )
    assert [(e.event, e.result) for e in unshelve.action.events] == [
        ("conductor_unshelve_instance", "Error")
    ]


@pytest.mark.parametrize("verb", ["shelve_offload", "unshelve"])
async def test_an_active_server_refuses_offload_and_unshelve(stack: Harness, verb: str) -> None:
    await stack.scheduler.add_host("host-a")
    sid, _ = await active_server(stack)
    call = (
        stack.servers.UnshelveServer(T.UnshelveServerRequest(id=sid, request_id="x"))
        if verb == "unshelve"
        else stack.servers.ShelveOffloadServer(T.ShelveOffloadServerRequest(id=sid, request_id="x"))
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == f"Cannot '{verb}' instance {sid} while it is in vm_state active"


async def test_deleting_an_offloaded_server_deletes_it_at_once(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_SHELVING_OFFLOADING)
    await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)
    await stack.servers.DeleteServer(T.DeleteServerRequest(id=sid, request_id="d1"))
    gone = await server(stack, sid, include_deleted=True)
    assert gone.status == S.SERVER_STATUS_DELETED
    # No host holds it, so no host is sent a delete.
    with pytest.raises(TimeoutError):
        await agent.next_command(within=0.5)


async def test_an_unshelve_build_stranded_on_a_host_that_went_down_is_rescheduled(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.ShelveServer(T.ShelveServerRequest(id=sid, request_id="sh1"))
    await _answer(agent, sid, "shelve", agent_bus_pb2.POWER_STATE_SHUTDOWN)
    await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_SHELVING_OFFLOADING)
    await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED)
    await stack.servers.UnshelveServer(T.UnshelveServerRequest(id=sid, request_id="un1"))
    build = await agent.build_command()
    await stack.scheduler.add_host("host-b")
    stack.scheduler.stop_heartbeats("host-a")

    assert await StrandedBuilds(stack.conductor).run_once() == 1
    moved = await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_SPAWNING)
    assert (moved.host, moved.attempts) == ("host-b", build.attempt + 1)
    assert moved.status == S.SERVER_STATUS_SHELVED_OFFLOADED
    unshelve = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="un1")
    )
    assert [(e.event, e.result) for e in unshelve.action.events] == [
        ("compute_unshelve_instance", "Error")
    ]


async def test_a_shelve_with_a_snapshot_unshelves_from_it_and_has_the_host_drop_it(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    snapshot = make_image(name="vm-shelved", status="active", visibility="private")
    async with stack.sessions() as session:
        base_image = (
            await session.execute(select(Instance.image_id).where(Instance.uuid == sid))
        ).scalar_one()
        session.add(snapshot)
        await session.commit()

    await stack.servers.ShelveServer(
        T.ShelveServerRequest(id=sid, request_id="sh-snap", image_id=snapshot.id)
    )
    got, data = await agent.next_command()
    assert got == "shelve"
    shelve = agent_bus_pb2.ShelveInstanceCommand.FromString(data)
    # The shelve's snapshot is taken of the disk built from the server's own image.
    assert (shelve.image_id, shelve.base_image.id) == (snapshot.id, base_image)
    event = agent_bus_pb2.InstanceEvent(
        request_id=shelve.request_id,
        instance_id=sid,
        host=agent.host,
        kind=K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
        action="shelve",
    )
    await agent.js.publish(
        bus.instance_event_subject(agent.host),
        event.SerializeToString(),
        headers={"Nats-Msg-Id": f"{shelve.request_id}:done"},
    )
    await _answer(agent, sid, "shelve_offload", agent_bus_pb2.POWER_STATE_UNSPECIFIED)
    await wait_for(
        stack, sid, lambda s: s.status == S.SERVER_STATUS_SHELVED_OFFLOADED and not s.task_state
    )

    await stack.servers.UnshelveServer(T.UnshelveServerRequest(id=sid, request_id="un-snap"))
    build = await agent.build_command()
    # Built from the snapshot, which the host drops once the server runs.
    assert (build.spec.image.id, build.drop_image_id) == (snapshot.id, snapshot.id)
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        attempt=2,
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    active = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert active.image_id == base_image  # the server still shows the image it came from
    async with stack.sessions() as session:
        row = (await session.execute(select(Instance).where(Instance.uuid == sid))).scalar_one()
        assert row.shelved_image_id is None
