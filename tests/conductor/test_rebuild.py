"""Rebuild through the conductor: the state rules, the command the host gets, the
rebuilding → rebuild_spawning → settled path and its outcomes."""

from __future__ import annotations

import grpc
import pytest
from loom.common.v1 import common_pb2
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import servers_pb2

from tests.conductor.conftest import IMAGE_ID, Agent, Harness
from tests.conductor.factories import USER, add, make_image, make_keypair
from tests.conductor.test_flow import K, S, active_server, server, wait_for

T = servers_pb2
NEW_IMAGE = "99999999-8888-7777-6666-555555555555"


async def _rebuild_command(agent: Agent) -> agent_bus_pb2.RebuildInstanceCommand:
    verb, data = await agent.next_command()
    assert verb == "rebuild"
    return agent_bus_pb2.RebuildInstanceCommand.FromString(data)


async def test_a_rebuild_records_the_new_image_and_settles_active_through_rebuild_spawning(
    stack: Harness,
) -> None:
    await add(
        stack.sessions,
        make_image(NEW_IMAGE, properties={"hw_disk_bus": "scsi", "os_distro": "debian"}),
        make_keypair("k2"),
    )
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    reply = await stack.servers.RebuildServer(
        T.RebuildServerRequest(
            id=sid,
            request_id="rb1",
            user_id=USER,
            image_id=NEW_IMAGE,
            name="rebuilt",
            metadata={"role": "db"},
            replace_metadata=True,
            key_name="k2",
            user_data="aGVsbG8=",
        )
    )
    assert reply.server.image_id == NEW_IMAGE
    assert reply.server.name == "rebuilt"
    assert dict(reply.server.metadata) == {"role": "db"}
    assert reply.server.task_state == T.TASK_STATE_REBUILDING
    assert reply.server.status == S.SERVER_STATUS_REBUILD
    assert reply.server.key_name == "k2"

    cmd = await _rebuild_command(agent)
    assert cmd.power_on
    assert cmd.spec.instance_id == sid
    assert cmd.spec.image.id == NEW_IMAGE
    assert cmd.spec.image.properties["hw_disk_bus"] == "scsi"
    assert cmd.spec.key_data == "ssh-ed25519 AAAA test"
    assert cmd.spec.user_data == "aGVsbG8="
    assert cmd.spec.display_name == "rebuilt"

    await agent.report(sid, K.INSTANCE_EVENT_KIND_REBUILD_SPAWNING, action="rebuild")
    spawning = await wait_for(stack, sid, lambda s: s.task_state == T.TASK_STATE_REBUILD_SPAWNING)
    assert spawning.status == S.SERVER_STATUS_REBUILD
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="rebuild",
        power_state=agent_bus_pb2.POWER_STATE_RUNNING,
    )
    done = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ACTIVE)
    assert done.image_properties["os_distro"] == "debian"
    action = await stack.servers.GetInstanceAction(
        T.GetInstanceActionRequest(id=sid, request_id="rb1")
    )
    assert [(e.event, e.result) for e in action.action.events] == [
        ("compute_rebuild_instance", "Success")
    ]


async def test_a_stopped_server_is_rebuilt_and_left_shut_off(stack: Harness) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.StopServer(T.StopServerRequest(id=sid, request_id="st"))
    assert (await agent.next_command())[0] == "stop"
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="stop",
        power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
    )
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHUTOFF)
    await stack.servers.RebuildServer(
        T.RebuildServerRequest(id=sid, request_id="rb1", image_id=IMAGE_ID)
    )
    assert (await server(stack, sid)).status == S.SERVER_STATUS_REBUILD
    cmd = await _rebuild_command(agent)
    assert not cmd.power_on
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        action="rebuild",
        power_state=agent_bus_pb2.POWER_STATE_SHUTDOWN,
    )
    await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_SHUTOFF and not s.task_state)


async def test_a_rebuild_the_host_could_not_finish_puts_the_server_in_error(
    stack: Harness,
) -> None:
    await stack.scheduler.add_host("host-a")
    sid, agent = await active_server(stack)
    await stack.servers.RebuildServer(
        T.RebuildServerRequest(id=sid, request_id="rb1", image_id=IMAGE_ID)
    )
    await _rebuild_command(agent)
    await agent.report(
        sid,
        K.INSTANCE_EVENT_KIND_ACTION_FAILED,
        action="rebuild",
        power_state=agent_bus_pb2.POWER_STATE_UNSPECIFIED,
        fault=common_pb2.Fault(code=500, message="The hypervisor could not define the domain."),
    )
    failed = await wait_for(stack, sid, lambda s: s.status == S.SERVER_STATUS_ERROR)
    assert failed.fault.message == "The hypervisor could not define the domain."
    # An errored server may be rebuilt again.
    await stack.servers.RebuildServer(
        T.RebuildServerRequest(id=sid, request_id="rb2", image_id=IMAGE_ID)
    )
    assert (await server(stack, sid)).status == S.SERVER_STATUS_REBUILD


async def test_a_rebuild_is_refused_for_a_bad_image_or_key_or_a_state_that_forbids_it(
    stack: Harness,
) -> None:
    await add(stack.sessions, make_image(NEW_IMAGE, status="queued"))
    await stack.scheduler.add_host("host-a")
    sid, _agent = await active_server(stack)
    cases = [
        (dict(image_id="00000000-0000-0000-0000-000000000000"), "could not be found"),
        (dict(image_id=NEW_IMAGE), "is not active"),
        (dict(image_id=IMAGE_ID, key_name="nope"), "Invalid key_name provided: nope"),
    ]
    for fields, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stack.servers.RebuildServer(
                T.RebuildServerRequest(id=sid, request_id="x", user_id=USER, **fields)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (info.value.details() or "")
    await stack.servers.PauseServer(T.PauseServerRequest(id=sid, request_id="p"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stack.servers.RebuildServer(
            T.RebuildServerRequest(id=sid, request_id="y", image_id=IMAGE_ID)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        info.value.details() == f"Cannot 'rebuild' instance {sid} while it is in task_state pausing"
    )
    assert (await server(stack, sid)).image_id == IMAGE_ID
