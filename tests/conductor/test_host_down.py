"""Servers on a host that went down: local delete, and builds stranded there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from loom.compute.v1 import compute_pb2
from loom.conductor.v1 import conductor_pb2

from tests.conductor.conftest import Harness
from tests.conductor.factories import add, make_service
from tests.conductor.test_flow import S, active_server, server

K = compute_pb2.InstanceEventKind


def _long_ago(h: Harness) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=h.conductor.cfg.conductor.service_down_time + 5)


async def test_deleting_a_server_whose_host_is_down_deletes_it_at_once_and_still_tells_the_host(
    stack: Harness,
) -> None:
    stack.peer.add_host("host-a")
    sid, agent = await active_server(stack)
    await add(stack.sessions, make_service("host-a", last_seen_up=_long_ago(stack)))

    await stack.servers.DeleteServer(conductor_pb2.DeleteServerRequest(id=sid, request_id="d1"))

    gone = await server(stack, sid, include_deleted=True)
    assert gone.deleted
    assert gone.status == S.SERVER_STATUS_DELETED
    assert gone.HasField("terminated_at")
    assert stack.peer.releases[(sid, "host-a")] == 1
    assert sid not in stack.peer.claims
    action = await stack.servers.GetInstanceAction(
        conductor_pb2.GetInstanceActionRequest(id=sid, request_id="d1")
    )
    assert action.action.action == "delete"
    assert [(e.event, e.result) for e in action.action.events] == [
        ("conductor_local_delete", "Success")
    ]
    # The host still gets the command, for when its agent returns.
    verb, data = await agent.next_command()
    assert verb == "delete"
    assert compute_pb2.DeleteInstanceCommand.FromString(data).instance_id == sid

    # The agent comes back and answers; nothing is released or changed a second time.
    await agent.report(sid, K.INSTANCE_EVENT_KIND_DELETED)
    await stack.servers.DeleteServer(conductor_pb2.DeleteServerRequest(id=sid, request_id="d2"))
    assert stack.peer.releases[(sid, "host-a")] == 1
    assert (await server(stack, sid, include_deleted=True)).deleted


async def test_a_delete_waiting_for_a_host_that_then_went_down_completes_when_asked_again(
    stack: Harness,
) -> None:
    stack.peer.add_host("host-a")
    sid, _ = await active_server(stack)
    service = make_service("host-a")
    await add(stack.sessions, service)
    await stack.servers.DeleteServer(conductor_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    assert (await server(stack, sid)).task_state == conductor_pb2.TASK_STATE_DELETING

    await stack.fleet.UpdateService(
        conductor_pb2.UpdateServiceRequest(request_id="f1", id=service.uuid, forced_down=True)
    )
    await stack.servers.DeleteServer(conductor_pb2.DeleteServerRequest(id=sid, request_id="d2"))

    gone = await server(stack, sid, include_deleted=True)
    assert gone.deleted
    assert stack.peer.releases[(sid, "host-a")] == 1


async def test_deleting_a_server_whose_host_is_up_still_waits_for_the_agent(
    stack: Harness,
) -> None:
    stack.peer.add_host("host-a")
    sid, _ = await active_server(stack)
    await add(stack.sessions, make_service("host-a"))
    await stack.servers.DeleteServer(conductor_pb2.DeleteServerRequest(id=sid, request_id="d1"))
    deleting = await server(stack, sid)
    assert deleting.task_state == conductor_pb2.TASK_STATE_DELETING
    assert not deleting.deleted
    assert stack.peer.releases[(sid, "host-a")] == 0
