"""Pause, unpause, suspend, resume, shelve, offload, unshelve and rebuild on a host agent:
real nats-server, libvirt's test driver (whose managed save works as QEMU's does: the
domain stops, its memory on disk)."""

from __future__ import annotations

from typing import Any

from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS

from nodeagent.driver.base import PowerState, RebuildDriver
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec, send

_COMMANDS: dict[str, Any] = {
    "pause": agent_bus_pb2.PauseInstanceCommand,
    "unpause": agent_bus_pb2.UnpauseInstanceCommand,
    "suspend": agent_bus_pb2.SuspendInstanceCommand,
    "resume": agent_bus_pb2.ResumeInstanceCommand,
}


async def test_pause_unpause_suspend_resume_report_their_actions_and_power_states(
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
    dom = agent.driver._c.lookupByUUIDString(iid)  # type: ignore[attr-defined]

    steps = [
        ("pause", agent_bus_pb2.POWER_STATE_PAUSED),
        # A redelivered pause (same request) finds the domain paused and succeeds again.
        ("pause", agent_bus_pb2.POWER_STATE_PAUSED),
        ("unpause", agent_bus_pb2.POWER_STATE_RUNNING),
        ("suspend", agent_bus_pb2.POWER_STATE_SUSPENDED),
        ("suspend", agent_bus_pb2.POWER_STATE_SUSPENDED),
        ("resume", agent_bus_pb2.POWER_STATE_RUNNING),
    ]
    for n, (verb, power) in enumerate(steps):
        command = _COMMANDS[verb](request_id=f"r-{verb}-{n}", instance_id=iid)
        await send(js, "h1", verb, command)
        event = await events.next()
        assert (event.kind, event.action, event.request_id) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
            verb,
            command.request_id,
        )
        assert event.power_state == power
        if verb == "pause":
            assert dom.isActive()  # the domain stays in memory
        if verb == "suspend":
            assert not dom.isActive()
            assert dom.hasManagedSaveImage(0)
    assert not dom.hasManagedSaveImage(0)  # the resume consumed the saved memory
    assert agent.driver.describe(iid) == PowerState.RUNNING


async def test_the_power_sync_reports_nothing_for_a_paused_or_suspended_guest(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    paused, suspended = make_spec(), make_spec()
    for spec in (paused, suspended):
        await send(js, "h1", "build", build_command(spec))
        assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
    await send(
        js, "h1", "pause", _COMMANDS["pause"](request_id="p", instance_id=paused.instance_id)
    )
    await send(
        js,
        "h1",
        "suspend",
        _COMMANDS["suspend"](request_id="s", instance_id=suspended.instance_id),
    )
    assert (await events.next()).action == "pause"
    assert (await events.next()).action == "suspend"
    assert await agent.sync_power_states() == 0


async def test_unpausing_a_shut_off_guest_fails_with_a_conflict_fault(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    await send(js, "h1", "build", build_command(spec))
    await events.next()
    await send(
        js,
        "h1",
        "stop",
        agent_bus_pb2.StopInstanceCommand(request_id="st", instance_id=spec.instance_id),
    )
    await events.next()
    await send(
        js, "h1", "unpause", _COMMANDS["unpause"](request_id="u", instance_id=spec.instance_id)
    )
    event = await events.next()
    assert event.kind == agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED
    assert event.fault.code == 409
    assert event.power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN


async def test_deleting_a_suspended_guest_removes_the_domain_and_its_saved_memory(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    await send(js, "h1", "build", build_command(spec))
    await events.next()
    await send(
        js, "h1", "suspend", _COMMANDS["suspend"](request_id="s", instance_id=spec.instance_id)
    )
    assert (await events.next()).power_state == agent_bus_pb2.POWER_STATE_SUSPENDED
    await send(
        js,
        "h1",
        "delete",
        agent_bus_pb2.DeleteInstanceCommand(request_id="d", instance_id=spec.instance_id),
    )
    assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_DELETED
    assert agent.driver.list_instances() == {}


async def test_shelve_stops_unshelve_starts_and_offload_removes_the_domain_for_good(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    iid = spec.instance_id
    await send(js, "h1", "build", build_command(spec))
    await events.next()
    # A suspended guest is shelved too: its saved memory is dropped, it is shut off.
    await send(js, "h1", "suspend", _COMMANDS["suspend"](request_id="s", instance_id=iid))
    assert (await events.next()).power_state == agent_bus_pb2.POWER_STATE_SUSPENDED
    steps: list[tuple[str, Any, int]] = [
        ("shelve", agent_bus_pb2.ShelveInstanceCommand, agent_bus_pb2.POWER_STATE_SHUTDOWN),
        ("unshelve", agent_bus_pb2.UnshelveInstanceCommand, agent_bus_pb2.POWER_STATE_RUNNING),
        ("shelve", agent_bus_pb2.ShelveInstanceCommand, agent_bus_pb2.POWER_STATE_SHUTDOWN),
        (
            "shelve_offload",
            agent_bus_pb2.ShelveOffloadInstanceCommand,
            agent_bus_pb2.POWER_STATE_UNSPECIFIED,
        ),
        # Redelivered: the domain is gone already, and that is success.
        (
            "shelve_offload",
            agent_bus_pb2.ShelveOffloadInstanceCommand,
            agent_bus_pb2.POWER_STATE_UNSPECIFIED,
        ),
    ]
    for n, (verb, kind, power) in enumerate(steps):
        command = kind(request_id=f"r-{n}", instance_id=iid)
        await send(js, "h1", verb, command)
        event = await events.next()
        assert (event.kind, event.action, event.power_state) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
            verb,
            power,
        )
        if verb == "shelve":
            dom = agent.driver._c.lookupByUUIDString(iid)  # type: ignore[attr-defined]
            assert not dom.isActive()
            assert not dom.hasManagedSaveImage(0)
    assert agent.driver.list_instances() == {}
    # The power sync does not report the offloaded instance missing.
    assert await agent.sync_power_states() == 0


async def test_a_rebuild_makes_the_domain_again_once_per_command(
    make_agent: AgentFactory, bus_nc: NATS
) -> None:
    agent = make_agent()
    await agent.start()
    events = await EventReader.open(bus_nc, "h1")
    js = bus_nc.jetstream()
    spec = make_spec()
    iid = spec.instance_id
    await send(js, "h1", "build", build_command(spec))
    await events.next()
    conn = agent.driver._c  # type: ignore[attr-defined]
    before = conn.lookupByUUIDString(iid).ID()

    rebuilt = agent_bus_pb2.InstanceSpec()
    rebuilt.CopyFrom(spec)
    rebuilt.display_name = "rebuilt"
    command = agent_bus_pb2.RebuildInstanceCommand(request_id="rb-1", spec=rebuilt, power_on=True)
    await send(js, "h1", "rebuild", command)
    progress = await events.next()
    assert (progress.kind, progress.action) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_REBUILD_SPAWNING,
        "rebuild",
    )
    done = await events.next()
    assert (done.kind, done.action, done.power_state) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        "rebuild",
        agent_bus_pb2.POWER_STATE_RUNNING,
    )
    after = conn.lookupByUUIDString(iid).ID()
    assert after != before  # a new domain

    # The same rebuild again (a redelivery) finds it done and leaves the domain be.
    driver = agent.driver
    assert isinstance(driver, RebuildDriver)
    assert driver.rebuild(rebuilt, power_on=True, rebuild_id="rb-1") == PowerState.RUNNING
    assert conn.lookupByUUIDString(iid).ID() == after
    # Another rebuild, shut off this time.
    assert driver.rebuild(rebuilt, power_on=False, rebuild_id="rb-2") == PowerState.SHUTDOWN
