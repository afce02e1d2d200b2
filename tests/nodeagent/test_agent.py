"""A host agent over a real nats-server and libvirt's test driver."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS
from nats.js.errors import NoStreamResponseError

from controlplane.config import AgentConfig, NatsConfig
from controlplane.runtime import bus
from controlplane.runtime.natsserver import NatsServerProcess
from nodeagent.driver.base import PowerState
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec, send
from tests.support import polling
from tests.support.nats import RestartableNats

# Where an agent's pull requests for host h1 go.
PULLS_H1 = f"$JS.API.CONSUMER.MSG.NEXT.{bus.COMPUTE_STREAM}.agent-h1"


async def _consumer_pending(nc: NATS, host: str) -> tuple[int, int]:
    info = await nc.jetstream().consumer_info(bus.COMPUTE_STREAM, f"agent-{host}")
    return info.num_pending, info.num_ack_pending


async def _wait_drained(nc: NATS, host: str) -> None:
    async def drained() -> bool:
        return await _consumer_pending(nc, host) == (0, 0)

    await polling.eventually(drained, polling.AGENT_COMMAND_S, f"commands for {host} all acked")


async def _pulls_open(nc: NATS, host: str, count: int = 1) -> None:
    """Returns once `count` pull requests of the host's agent are open on the server."""

    async def open_() -> bool:
        info = await nc.jetstream().consumer_info(bus.COMPUTE_STREAM, f"agent-{host}")
        return (info.num_waiting or 0) >= count

    await polling.eventually(
        open_, polling.AGENT_COMMAND_S, f"{count} pull request(s) of {host} open"
    )


async def test_a_build_command_runs_the_domain_and_reports_build_succeeded(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec()
    cmd = build_command(spec, attempt=2)
    await send(bus_nc.jetstream(), "h1", "build", cmd)

    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    assert (event.instance_id, event.host, event.request_id) == (
        spec.instance_id,
        "h1",
        cmd.request_id,
    )
    assert (event.action, event.attempt) == ("build", 2)
    assert event.power_state == agent_bus_pb2.POWER_STATE_RUNNING
    assert agent.driver.describe(spec.instance_id) == PowerState.RUNNING
    await _wait_drained(bus_nc, "h1")


async def test_a_redelivered_build_changes_nothing_and_reports_again(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    cmd = build_command(spec)
    await send(js, "h1", "build", cmd)
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    domain_id = agent.driver._c.lookupByUUIDString(spec.instance_id).ID()  # type: ignore[attr-defined]

    # The same command again (a relay resend under another message id): the agent
    # answers again, and the event's own id makes JetStream drop the duplicate answer.
    await send(js, "h1", "build", cmd, msg_id=f"resend-{uuid.uuid4()}")
    await _wait_drained(bus_nc, "h1")
    assert await events.none_within(0.5)

    # A fresh request for the same instance gets its own answer with the current state.
    again = build_command(spec)
    await send(js, "h1", "build", again)
    event = await events.next()
    assert (event.kind, event.request_id) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        again.request_id,
    )
    assert event.power_state == agent_bus_pb2.POWER_STATE_RUNNING
    assert agent.driver._c.lookupByUUIDString(spec.instance_id).ID() == domain_id  # type: ignore[attr-defined]
    assert list(agent.driver.list_instances()) == [spec.instance_id]


async def test_stop_start_reboot_and_delete_report_their_actions_and_power_states(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    iid = spec.instance_id
    await send(js, "h1", "build", build_command(spec))
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED

    steps = [
        (
            "stop",
            agent_bus_pb2.StopInstanceCommand(request_id="r-stop", instance_id=iid),
            agent_bus_pb2.POWER_STATE_SHUTDOWN,
        ),
        (
            "start",
            agent_bus_pb2.StartInstanceCommand(request_id="r-start", instance_id=iid),
            agent_bus_pb2.POWER_STATE_RUNNING,
        ),
        (
            "reboot",
            agent_bus_pb2.RebootInstanceCommand(
                request_id="r-soft", instance_id=iid, reboot_type=agent_bus_pb2.REBOOT_TYPE_SOFT
            ),
            agent_bus_pb2.POWER_STATE_RUNNING,
        ),
        (
            "reboot",
            agent_bus_pb2.RebootInstanceCommand(
                request_id="r-hard", instance_id=iid, reboot_type=agent_bus_pb2.REBOOT_TYPE_HARD
            ),
            agent_bus_pb2.POWER_STATE_RUNNING,
        ),
    ]
    for verb, command, power in steps:
        await send(js, "h1", verb, command)
        event = await events.next()
        assert (event.kind, event.action, event.request_id) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
            verb,
            command.request_id,
        )
        assert event.power_state == power

    await send(
        js, "h1", "delete", agent_bus_pb2.DeleteInstanceCommand(request_id="r-del", instance_id=iid)
    )
    event = await events.next()
    assert (event.kind, event.action) == (agent_bus_pb2.INSTANCE_EVENT_KIND_DELETED, "delete")
    assert agent.driver.list_instances() == {}


async def test_deleting_an_absent_instance_succeeds(make_agent: AgentFactory, bus_nc: NATS) -> None:
    await make_agent().start()
    events = await EventReader.open(bus_nc, "h1")
    iid = str(uuid.uuid4())
    await send(
        bus_nc.jetstream(),
        "h1",
        "delete",
        agent_bus_pb2.DeleteInstanceCommand(request_id="d1", instance_id=iid),
    )
    event = await events.next()
    assert (event.kind, event.instance_id) == (agent_bus_pb2.INSTANCE_EVENT_KIND_DELETED, iid)
    assert not event.HasField("fault")
    await _wait_drained(bus_nc, "h1")


async def test_starting_an_absent_instance_reports_action_failed_with_a_404_fault(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    await make_agent().start()
    events = await EventReader.open(bus_nc, "h1")
    iid = str(uuid.uuid4())
    await send(
        bus_nc.jetstream(),
        "h1",
        "start",
        agent_bus_pb2.StartInstanceCommand(request_id="s1", instance_id=iid),
    )
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED
    assert event.fault.code == 404


async def test_a_failed_build_reports_build_failed_and_leaves_no_domain(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec(vcpus=0)  # libvirt refuses a domain without vCPUs
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec, attempt=3))
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_FAILED
    assert (event.fault.code, event.attempt) == (500, 3)
    assert event.fault.message.endswith(".")
    assert event.fault.message.count(".") == 1
    assert agent.driver.list_instances() == {}
    assert not (agent.driver.instances_dir / spec.instance_id).exists()  # type: ignore[attr-defined]
    await _wait_drained(bus_nc, "h1")


async def test_a_build_whose_dhcp_service_is_invalid_fails_with_a_sentence_saying_so(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    net = str(uuid.uuid4())
    port = agent_bus_pb2.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=net,
        segmentation_id=77,
        mac_address="fa:16:3e:00:00:07",
    )
    spec = make_spec(ports=[port])
    command = build_command(spec)
    command.dhcp.append(
        agent_bus_pb2.NetworkDhcp(
            network_id=net,
            vni=77,
            subnets=[
                agent_bus_pb2.DhcpSubnet(
                    subnet_id="subnet-0000-0007", cidr="10.7.0.0/24", dhcp_server_ip="10.8.0.2"
                )
            ],
        )
    )
    await send(bus_nc.jetstream(), "h1", "build", command)
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_FAILED
    assert event.fault.message == (
        "The DHCP service of a network is invalid: dhcp_server_ip is outside the subnet."
    )
    assert agent.driver.list_instances() == {}
    await _wait_drained(bus_nc, "h1")


async def test_heartbeats_are_published_on_the_hosts_subject(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    sub = await bus_nc.subscribe(bus.heartbeat_subject("h1"))
    await make_agent(heartbeat_interval=0.1).start()
    beats = [
        agent_bus_pb2.Heartbeat.FromString((await sub.next_msg(timeout=5)).data) for _ in range(3)
    ]
    await sub.unsubscribe()
    assert {b.host for b in beats} == {"h1"}
    assert {b.binary for b in beats} == {"loom-compute"}
    assert beats[0].compute_endpoint == "127.0.0.1:1"


async def test_the_inventory_report_describes_the_host_and_its_reservations(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    await make_agent(reserved_host_memory_mb=1024, reserved_host_disk_gb=5).start()
    msg = await bus_nc.jetstream().get_last_msg(bus.INVENTORY_STREAM, bus.inventory_subject("h1"))
    report = agent_bus_pb2.HostInventoryReport.FromString(msg.data)
    assert (report.vcpu.total, report.memory_mb.total, report.disk_gb.total) == (8, 16384, 100)
    assert (report.memory_mb.reserved, report.disk_gb.reserved) == (1024, 5)
    assert report.vcpu.allocation_ratio == 0.0
    assert (report.hypervisor_type, report.availability_zone) == ("test", "az-test")
    assert report.hypervisor_version > 0
    assert report.compute_endpoint == "127.0.0.1:1"


async def test_an_unchanged_inventory_is_not_published_again(make_agent: AgentFactory) -> None:
    agent = make_agent()
    await agent.start()
    assert await agent.publish_inventory() is False
    assert await agent.publish_inventory(force=True) is True


async def test_a_power_change_nobody_commanded_is_reported(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec()
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec))
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    assert await agent.sync_power_states() == 0

    # The guest powers itself off behind Loom's back.
    agent.driver._c.lookupByUUIDString(spec.instance_id).destroy()  # type: ignore[attr-defined]
    assert await agent.sync_power_states() == 1
    event = await events.next()
    assert (event.kind, event.power_state, event.action) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED,
        agent_bus_pb2.POWER_STATE_SHUTDOWN,
        "",
    )
    assert await agent.sync_power_states() == 0


async def test_the_periodic_power_sync_runs_on_its_own(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent(power_sync_interval=0.1)
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    spec = make_spec()
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec))
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    agent.driver._c.lookupByUUIDString(spec.instance_id).destroy()  # type: ignore[attr-defined]
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED


async def test_a_command_left_unacked_by_a_dead_agent_is_handled_after_restart(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    first = make_agent(ack_wait=1.0)
    await first.start()
    await first.stop()
    js = bus_nc.jetstream()
    events = await EventReader.open(bus_nc, "h1")

    # Play the agent that dies mid-command: take the build from the durable consumer
    # and never acknowledge it.
    crashed = await js.pull_subscribe_bind(durable="agent-h1", stream=bus.COMPUTE_STREAM)
    spec = make_spec()
    await send(js, "h1", "build", build_command(spec))
    taken = await crashed.fetch(1, timeout=5)
    assert len(taken) == 1
    await crashed.unsubscribe()

    second = make_agent(ack_wait=1.0)
    await second.start()
    event = await events.next(wait=15)
    assert (event.kind, event.instance_id) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        spec.instance_id,
    )
    assert second.driver.describe(spec.instance_id) == PowerState.RUNNING
    await _wait_drained(bus_nc, "h1")


async def test_stopping_an_agent_leaves_its_durable_consumer_for_the_next_one(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    await agent.stop()
    await send(bus_nc.jetstream(), "h1", "build", build_command(make_spec()))
    # stop() ends its open pull request, so nothing holds the command: it waits, pending
    # (not ack-pending until ack_wait), for the next agent of the host.
    assert await _consumer_pending(bus_nc, "h1") == (1, 0)


async def test_a_command_that_reaches_a_stopping_agent_is_handled_promptly_by_the_next_one(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    # ack_wait stays at its 30 s default: a command stranded on the stopping agent's pull
    # request would only come back after it, far beyond the wait below. The race is
    # timing-dependent, so it is run a few times at different moments of the pull.
    events = await EventReader.open(bus_nc, "h1")
    for attempt in range(5):
        stopping = make_agent()
        await stopping.start()
        await _pulls_open(bus_nc, "h1")
        # Part of the scenario: the command meets the pull request at a different moment of
        # its life in each attempt.
        await asyncio.sleep(0.03 * attempt)
        # Published without waiting for the stream's ack, so the stop starts while
        # JetStream hands the command to the stopping agent's pull request.
        command = build_command(make_spec())
        await bus_nc.publish(
            bus.compute_subject("h1", "build"),
            command.SerializeToString(),
            headers={"Nats-Msg-Id": command.request_id},
        )
        await stopping.stop()

        successor = make_agent()
        await successor.start()
        event = await events.next()
        assert (event.kind, event.request_id) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
            command.request_id,
        )
        await _wait_drained(bus_nc, "h1")
        await successor.stop()


async def test_an_unknown_verb_or_an_undecodable_command_is_dropped_without_blocking_the_host(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    await make_agent().start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    await js.publish("loom.compute.h1.resize", b"", stream=bus.COMPUTE_STREAM)
    await js.publish(bus.compute_subject("h1", "build"), b"\xff\xff\xff", stream=bus.COMPUTE_STREAM)
    spec = make_spec()
    await send(js, "h1", "build", build_command(spec))
    event = await events.next()
    assert (event.kind, event.instance_id) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        spec.instance_id,
    )
    await _wait_drained(bus_nc, "h1")


async def test_an_idle_agent_keeps_one_pull_request_open_for_the_whole_expiry(
    make_agent: AgentFactory, fresh_nats: NatsServerProcess
) -> None:
    watcher = await bus.connect(fresh_nats.url, NatsConfig(), "pull-watcher")
    try:
        pulls = await watcher.subscribe(PULLS_H1)
        await watcher.flush()
        await make_agent().start()
        request = json.loads((await pulls.next_msg(timeout=5)).data)
        assert request["batch"] == 1
        expiry_ns = AgentConfig().command_pull_expiry * 1e9
        assert request["expires"] == pytest.approx(expiry_ns, abs=1e6)
        # Part of the scenario: with the former 2 s expiry an idle host pulled again every
        # 2 s; no second pull request may come in the next 3 s (an absence: nothing to poll).
        await asyncio.sleep(3.0)
        assert pulls.pending_msgs == 0
    finally:
        await watcher.close()


async def test_stopping_ends_the_open_pull_request_at_once_and_leaves_commands_for_the_next_agent(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()  # its pull requests stay open for 30 s (the default)
    await agent.start()
    await _pulls_open(bus_nc, "h1")
    opened = time.monotonic()
    await agent.stop()
    # The stop cancelled the pull request: it did not wait for the request to expire.
    assert time.monotonic() < opened + AgentConfig().command_pull_expiry
    js = bus_nc.jetstream()
    assert (await js.consumer_info(bus.COMPUTE_STREAM, "agent-h1")).num_waiting == 0
    # Nothing serves the host now: the command waits, pending, for the next agent.
    await send(js, "h1", "build", build_command(make_spec()))

    async def pending() -> bool:
        return await _consumer_pending(bus_nc, "h1") == (1, 0)

    await polling.eventually(pending, polling.AGENT_COMMAND_S, "the command pending")
    # And stays so: nobody takes it.
    assert await _consumer_pending(bus_nc, "h1") == (1, 0)


async def test_a_command_served_to_a_replaced_pull_request_is_still_handled(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    await _pulls_open(bus_nc, "h1")
    agent.repull()
    await _pulls_open(bus_nc, "h1", 2)  # the second one too; the server serves the oldest first
    spec = make_spec()
    await send(bus_nc.jetstream(), "h1", "build", build_command(spec))
    # ack_wait is 30 s: a command dropped with the first request would not come back here.
    event = await events.next()
    assert (event.kind, event.instance_id) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED,
        spec.instance_id,
    )
    await _wait_drained(bus_nc, "h1")


async def test_replacing_pull_requests_while_commands_arrive_loses_none(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    # The race is timing-dependent: the pull request is replaced at different moments of
    # the command's way from the publisher to the agent.
    for attempt in range(8):
        command = build_command(make_spec())
        await bus_nc.publish(
            bus.compute_subject("h1", "build"),
            command.SerializeToString(),
            headers={"Nats-Msg-Id": command.request_id},
        )
        await asyncio.sleep(0.001 * attempt)  # part of the scenario: a different moment each time
        agent.repull()
        event = await events.next()
        assert event.request_id == command.request_id
    await _wait_drained(bus_nc, "h1")


async def _send_when_the_stream_is_back(
    nc: NATS, command: agent_bus_pb2.BuildInstanceCommand
) -> None:
    """Publishes a build for h1 once JetStream has its streams again after a restart."""

    async def sent() -> bool:
        try:
            await send(nc.jetstream(), "h1", "build", command)
        except (NoStreamResponseError, TimeoutError):  # a resend is deduplicated
            return False
        return True

    await polling.eventually(sent, polling.SERVICE_READY_S, "JetStream taking the command")


async def test_after_a_nats_restart_an_agent_takes_commands_again_within_seconds(
    restartable_nats: RestartableNats, make_agent: AgentFactory
) -> None:
    watch = bus.ConnectionWatch()
    nc = await bus.connect(restartable_nats.url, NatsConfig(), "agent-restart", watch=watch)
    try:
        agent = make_agent(nc=nc, watch=watch)  # pull requests last 30 s (the default)
        await agent.start()
        await _pulls_open(nc, "h1")  # its pull request is open on the server, and dies with it
        back = asyncio.Event()
        watch.on_restored(back.set)
        restartable_nats.kill()
        await asyncio.to_thread(restartable_nats.restart)
        await asyncio.wait_for(back.wait(), polling.SERVICE_READY_S)

        command = build_command(make_spec())
        await _send_when_the_stream_is_back(nc, command)
        began = time.monotonic()
        events = await EventReader.open(nc, "h1")
        event = await events.next()
        assert event.request_id == command.request_id
        # Without a fresh pull request it would have waited for the lost one to expire.
        assert time.monotonic() < began + AgentConfig().command_pull_expiry
        await agent.stop()
    finally:
        await nc.close()


async def test_a_stop_redelivered_after_the_start_that_followed_it_leaves_the_guest_running(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    # Found by chaos scenario R3 (about one run in ten): a stop whose ack never reached
    # JetStream came back after the start that followed it and shut the guest down.
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    iid = spec.instance_id
    await send(js, "h1", "build", build_command(spec), seq=10)
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    stop = agent_bus_pb2.StopInstanceCommand(request_id="stop-1", instance_id=iid)
    await send(js, "h1", "stop", stop, seq=11)
    assert (await events.next()).power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN
    start = agent_bus_pb2.StartInstanceCommand(request_id="start-1", instance_id=iid)
    await send(js, "h1", "start", start, seq=12)
    assert (await events.next()).power_state == agent_bus_pb2.POWER_STATE_RUNNING

    # The stop again, as JetStream redelivers one it never saw acked.
    await send(js, "h1", "stop", stop, msg_id=f"redelivered-{uuid.uuid4()}", seq=11)
    await _wait_drained(bus_nc, "h1")
    assert agent.driver.list_instances() == {iid: PowerState.RUNNING}
    assert await events.none_within(0.5)

    # A newer command is carried out as ever.
    stop_again = agent_bus_pb2.StopInstanceCommand(request_id="stop-2", instance_id=iid)
    await send(js, "h1", "stop", stop_again, seq=13)
    assert (await events.next()).power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN
    assert agent.driver.list_instances() == {iid: PowerState.SHUTDOWN}


async def test_a_build_redelivered_after_its_instance_was_deleted_does_not_bring_it_back(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    # Found by chaos scenario R3: a build whose ack never reached JetStream came back
    # after the server had been deleted and left a domain nobody owns.
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    cmd = build_command(spec)
    await send(js, "h1", "build", cmd)
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    delete = agent_bus_pb2.DeleteInstanceCommand(request_id="d1", instance_id=spec.instance_id)
    await send(js, "h1", "delete", delete)
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_DELETED

    # The same build command again, as JetStream redelivers one it never saw acked.
    await send(js, "h1", "build", cmd, msg_id=f"redelivered-{uuid.uuid4()}")
    event = await events.next()
    assert (event.kind, event.request_id) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_FAILED,
        cmd.request_id,
    )
    assert agent.driver.list_instances() == {}
    await _wait_drained(bus_nc, "h1")

    # A new build of that instance (another attempt) is still carried out.
    again = build_command(spec, attempt=2)
    await send(js, "h1", "build", again)
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    assert list(agent.driver.list_instances()) == [spec.instance_id]
