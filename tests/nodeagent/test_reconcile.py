"""Reconcile at start against a real gRPC FleetService playing the conductor."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from loom.compute.v1 import agent_bus_pb2
from loom.conductor.v1 import fleet_pb2, fleet_pb2_grpc, servers_pb2
from nats.aio.client import Client as NATS

from controlplane.runtime.natsserver import free_port
from nodeagent.driver.base import PowerState
from nodeagent.fleet import ExpectedInstance, GrpcFleetView
from nodeagent.reconcile import plan_reconcile
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, make_spec, make_test_driver, send
from tests.support import polling

C = servers_pb2


class RecordedFleet(fleet_pb2_grpc.FleetServiceServicer):
    """Answers ListHostInstances with a list the test chooses."""

    def __init__(self, instances: dict[str, Sequence[fleet_pb2.HostInstance]]) -> None:
        self.instances = instances
        self.asked: list[str] = []

    async def ListHostInstances(  # type: ignore[override]
        self, request: fleet_pb2.ListHostInstancesRequest, context: object
    ) -> fleet_pb2.ListHostInstancesResponse:
        self.asked.append(request.host)
        return fleet_pb2.ListHostInstancesResponse(
            instances=list(self.instances.get(request.host, []))
        )


async def _serve_fleet(fleet: RecordedFleet, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    fleet_pb2_grpc.add_FleetServiceServicer_to_server(fleet, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


@pytest.fixture
def fleet_port() -> int:
    return free_port()


def _channel(port: int) -> grpc.aio.Channel:
    # Quick reconnects, so a conductor that comes up late is found within a test's patience.
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    )


def _record(
    spec: agent_bus_pb2.InstanceSpec,
    vm: servers_pb2.VmState.ValueType,
    power: agent_bus_pb2.PowerState.ValueType,
    task: servers_pb2.TaskState.ValueType = C.TASK_STATE_UNSPECIFIED,
) -> fleet_pb2.HostInstance:
    return fleet_pb2.HostInstance(spec=spec, vm_state=vm, task_state=task, power_state=power)


async def test_reconcile_on_the_test_driver_recreates_drifts_and_removes_orphans(
    make_agent: AgentFactory, bus_nc: NATS, tmp_path: Path, fleet_port: int
) -> None:
    running, stopped, building = make_spec(), make_spec(), make_spec()
    drifted, orphan = make_spec(), make_spec()
    driver = make_test_driver(tmp_path, "h1")
    driver.open()
    driver.create(drifted)  # recorded as shut off, but running
    driver.create(orphan)  # not in the control plane's list
    fleet = RecordedFleet(
        {
            "h1": [
                _record(running, C.VM_STATE_ACTIVE, agent_bus_pb2.POWER_STATE_RUNNING),
                _record(stopped, C.VM_STATE_STOPPED, agent_bus_pb2.POWER_STATE_SHUTDOWN),
                _record(
                    building,
                    C.VM_STATE_BUILDING,
                    agent_bus_pb2.POWER_STATE_UNSPECIFIED,
                    C.TASK_STATE_SPAWNING,
                ),
                _record(drifted, C.VM_STATE_STOPPED, agent_bus_pb2.POWER_STATE_SHUTDOWN),
            ]
        }
    )
    server = await _serve_fleet(fleet, fleet_port)
    channel = _channel(fleet_port)
    try:
        events = await EventReader.open(bus_nc, "h1")
        agent = make_agent(fleet=GrpcFleetView(channel), driver=driver)
        await agent.start()
        await asyncio.wait_for(agent.reconciled.wait(), 10)

        assert fleet.asked == ["h1"]
        assert driver.list_instances() == {
            running.instance_id: PowerState.RUNNING,
            stopped.instance_id: PowerState.SHUTDOWN,
            drifted.instance_id: PowerState.RUNNING,
        }
        event = await events.next()
        assert (event.kind, event.instance_id, event.power_state) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_POWER_STATE_CHANGED,
            drifted.instance_id,
            agent_bus_pb2.POWER_STATE_RUNNING,
        )
        assert await events.none_within(0.3)
    finally:
        await channel.close()
        await server.stop(0)


async def test_commands_are_served_while_the_conductor_is_unreachable(
    make_agent: AgentFactory, bus_nc: NATS, fleet_port: int
) -> None:
    orphan_later = make_spec()
    channel = _channel(fleet_port)
    try:
        agent = make_agent(fleet=GrpcFleetView(channel))
        await agent.start()
        events = await EventReader.open(bus_nc, "h1")
        await send(bus_nc.jetstream(), "h1", "build", build_command(orphan_later))
        assert (await events.next()).kind == agent_bus_pb2.INSTANCE_EVENT_KIND_BUILD_SUCCEEDED
        assert not agent.reconciled.is_set()

        server = await _serve_fleet(RecordedFleet({}), fleet_port)
        try:
            await asyncio.wait_for(agent.reconciled.wait(), 15)
        finally:
            await server.stop(0)
        # Built after the libvirt snapshot reconcile took: never mistaken for an orphan.
        assert orphan_later.instance_id in agent.driver.list_instances()
    finally:
        await channel.close()


async def test_reconcile_asks_an_unreachable_conductor_again_backing_off_until_the_agent_stops(
    make_agent: AgentFactory, fleet_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodeagent.agent")
    channel = _channel(fleet_port)  # nothing listens there
    try:
        agent = make_agent(fleet=GrpcFleetView(channel))
        await agent.start()
        (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "rec-h1"]

        def retries() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "unreachable for reconcile" in r.msg]

        async def three_retries() -> bool:
            return len(retries()) >= 3

        # Backoffs of 0.2, 0.4 and 0.8 s, each after a connect attempt that fails at once.
        await polling.eventually(three_retries, polling.AGENT_COMMAND_S, "three retries logged")
        first = retries()[:3]
        assert [r.args[0] for r in first] == [0.2, 0.4, 0.8]
        # One warning, then quiet: a fleet of simulated hosts would flood the log.
        assert [r.levelno for r in first] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        await agent.stop_consuming()
        # The attempt after the current backoff is the last: reconcile gives up, not fails.
        await asyncio.wait_for(asyncio.shield(task), 10)
        assert task.exception() is None
        assert not agent.reconciled.is_set()
    finally:
        await channel.close()


def _expected(
    spec: agent_bus_pb2.InstanceSpec,
    vm: servers_pb2.VmState.ValueType,
    power: PowerState,
    task: servers_pb2.TaskState.ValueType = C.TASK_STATE_UNSPECIFIED,
) -> ExpectedInstance:
    return ExpectedInstance(spec=spec, vm_state=vm, task_state=task, power_state=power)


def test_a_persistent_hypervisor_reports_missing_domains_instead_of_recreating_them() -> None:
    spec = make_spec()
    plan = plan_reconcile(
        [_expected(spec, C.VM_STATE_ACTIVE, PowerState.RUNNING)], {}, {}, persistent=True
    )
    assert plan.missing == (spec.instance_id,)
    assert plan.recreate == ()


def test_instances_deleted_since_start_are_neither_recreated_nor_reported() -> None:
    spec = make_spec()
    plan = plan_reconcile(
        [_expected(spec, C.VM_STATE_ACTIVE, PowerState.RUNNING)],
        {},
        {},
        persistent=False,
        deleted_since_start={spec.instance_id},
    )
    assert (plan.recreate, plan.missing) == ((), ())


def test_instances_in_error_or_mid_task_are_left_to_their_commands() -> None:
    err, busy = make_spec(), make_spec()
    plan = plan_reconcile(
        [
            _expected(err, C.VM_STATE_ERROR, PowerState.NOSTATE),
            _expected(busy, C.VM_STATE_ACTIVE, PowerState.RUNNING, C.TASK_STATE_POWERING_OFF),
        ],
        {},
        {},
        persistent=True,
    )
    assert (plan.recreate, plan.missing, plan.drifted, plan.orphans) == ((), (), (), ())


def test_an_orphan_is_only_a_domain_seen_before_the_conductor_answered() -> None:
    seen, fresh = make_spec(), make_spec()
    plan = plan_reconcile(
        [],
        {seen.instance_id: PowerState.RUNNING},
        {seen.instance_id: PowerState.RUNNING, fresh.instance_id: PowerState.RUNNING},
        persistent=True,
    )
    assert plan.orphans == (seen.instance_id,)


async def test_reconcile_recreates_paused_guests_paused_and_shelved_ones_shut_off(
    make_agent: AgentFactory, bus_nc: NATS, tmp_path: Path, fleet_port: int
) -> None:
    paused, shelved, rebuilding, pausing = make_spec(), make_spec(), make_spec(), make_spec()
    driver = make_test_driver(tmp_path, "h1")
    fleet = RecordedFleet(
        {
            "h1": [
                _record(paused, C.VM_STATE_PAUSED, agent_bus_pb2.POWER_STATE_PAUSED),
                _record(shelved, C.VM_STATE_SHELVED, agent_bus_pb2.POWER_STATE_SHUTDOWN),
                # Mid-task: the redelivered rebuild or pause command finishes these; the
                # pause acts on a domain, so that one is re-created as recorded first.
                _record(
                    rebuilding,
                    C.VM_STATE_ACTIVE,
                    agent_bus_pb2.POWER_STATE_RUNNING,
                    C.TASK_STATE_REBUILD_SPAWNING,
                ),
                _record(
                    pausing,
                    C.VM_STATE_ACTIVE,
                    agent_bus_pb2.POWER_STATE_RUNNING,
                    C.TASK_STATE_PAUSING,
                ),
            ]
        }
    )
    server = await _serve_fleet(fleet, fleet_port)
    channel = _channel(fleet_port)
    try:
        events = await EventReader.open(bus_nc, "h1")
        agent = make_agent(fleet=GrpcFleetView(channel), driver=driver)
        await agent.start()
        await asyncio.wait_for(agent.reconciled.wait(), 10)
        assert driver.list_instances() == {
            paused.instance_id: PowerState.PAUSED,
            shelved.instance_id: PowerState.SHUTDOWN,
            pausing.instance_id: PowerState.RUNNING,
        }
        # All came back in the state recorded: nothing to report.
        assert await events.none_within(0.3)
        # A power sync right after leaves the paused guest alone.
        assert await agent.sync_power_states() == 0
    finally:
        await channel.close()
        await server.stop(0)


def test_a_lost_simulated_domain_mid_task_is_recreated_for_its_redelivered_command() -> None:
    # Found by chaos scenario R2: an agent of simulated hosts killed during a stop, start,
    # reboot or move came back without the domain, so the redelivered command found
    # nothing to act on and the server went to ERROR. Builds and deletes need no domain.
    acting = {
        C.TASK_STATE_POWERING_OFF: PowerState.RUNNING,
        C.TASK_STATE_POWERING_ON: PowerState.SHUTDOWN,
        C.TASK_STATE_REBOOTING: PowerState.RUNNING,
        C.TASK_STATE_REBOOTING_HARD: PowerState.RUNNING,
        C.TASK_STATE_RESIZE_MIGRATING: PowerState.RUNNING,
        C.TASK_STATE_PAUSING: PowerState.RUNNING,
    }
    specs = {task: make_spec() for task in acting}
    build, delete = make_spec(), make_spec()
    plan = plan_reconcile(
        [
            *(_expected(specs[t], C.VM_STATE_ACTIVE, p, t) for t, p in acting.items()),
            _expected(build, C.VM_STATE_BUILDING, PowerState.NOSTATE, C.TASK_STATE_SPAWNING),
            _expected(delete, C.VM_STATE_ACTIVE, PowerState.RUNNING, C.TASK_STATE_DELETING),
        ],
        {},
        {},
        persistent=False,
    )
    assert sorted(e.instance_id for e in plan.recreate) == sorted(
        s.instance_id for s in specs.values()
    )
    assert plan.missing == ()


def test_a_lost_simulated_domain_is_recreated_for_a_snapshot_an_unshelve_or_a_resize_end() -> None:
    # Found by chaos scenario R2: an agent of simulated hosts killed during a snapshot, a
    # backup or an unshelve came back without the domain; the redelivered command found
    # nothing (the snapshot failed and the server lost its domain; the unshelve left it
    # SHELVED). A moved server waiting in VERIFY_RESIZE, or being confirmed, lost the domain
    # it runs on for good; one being reverted lost the source's, and went to ERROR, as a
    # later revert of one killed in resize_finish would have.
    lost = {
        (C.VM_STATE_ACTIVE, C.TASK_STATE_IMAGE_SNAPSHOT): PowerState.RUNNING,
        (C.VM_STATE_ACTIVE, C.TASK_STATE_IMAGE_BACKUP): PowerState.RUNNING,
        (C.VM_STATE_SHELVED, C.TASK_STATE_UNSHELVING): PowerState.SHUTDOWN,
        (C.VM_STATE_RESIZED, C.TASK_STATE_UNSPECIFIED): PowerState.RUNNING,
        (C.VM_STATE_RESIZED, C.TASK_STATE_RESIZE_CONFIRMING): PowerState.RUNNING,
    }
    specs = {key: make_spec() for key in lost}
    # A source that stopped the server and keeps its domain for a revert.
    kept = {
        (C.VM_STATE_RESIZED, C.TASK_STATE_RESIZE_REVERTING): make_spec(),
        (C.VM_STATE_ACTIVE, C.TASK_STATE_RESIZE_FINISH): make_spec(),
    }
    plan = plan_reconcile(
        [
            *(_expected(specs[(vm, t)], vm, p, t) for (vm, t), p in lost.items()),
            *(_expected(spec, vm, PowerState.RUNNING, t) for (vm, t), spec in kept.items()),
        ],
        {},
        {},
        persistent=False,
    )
    recreated = {e.instance_id: e.power_state for e in plan.recreate}
    assert recreated == {
        **{specs[key].instance_id: power for key, power in lost.items()},
        # Shut off, as the source kept it: a revert starts it if the server ran.
        **{spec.instance_id: PowerState.SHUTDOWN for spec in kept.values()},
    }


def test_a_resize_source_gets_its_kept_domain_back_shut_off_and_no_other_move_copy() -> None:
    # The conductor lists a server with an open move for both hosts, with the states of its
    # own host (move_copy on the other). A source killed while the server waited in
    # VERIFY_RESIZE must get back the domain a revert starts, shut off; a destination still
    # being defined (resize_migrating, resize_finish) or a source being dropped (confirm)
    # gets it from its command, and nothing is reported about a copy.
    waiting, reverting, confirming = make_spec(), make_spec(), make_spec()
    migrating, finishing, drifted = make_spec(), make_spec(), make_spec()

    def copy(
        spec: agent_bus_pb2.InstanceSpec,
        vm: servers_pb2.VmState.ValueType,
        task: servers_pb2.TaskState.ValueType,
    ) -> ExpectedInstance:
        return replace(_expected(spec, vm, PowerState.RUNNING, task), move_copy=True)

    plan = plan_reconcile(
        [
            copy(waiting, C.VM_STATE_RESIZED, C.TASK_STATE_UNSPECIFIED),
            copy(reverting, C.VM_STATE_RESIZED, C.TASK_STATE_RESIZE_REVERTING),
            copy(confirming, C.VM_STATE_RESIZED, C.TASK_STATE_RESIZE_CONFIRMING),
            copy(migrating, C.VM_STATE_ACTIVE, C.TASK_STATE_RESIZE_MIGRATING),
            copy(finishing, C.VM_STATE_ACTIVE, C.TASK_STATE_RESIZE_FINISH),
            copy(drifted, C.VM_STATE_RESIZED, C.TASK_STATE_UNSPECIFIED),
        ],
        {drifted.instance_id: PowerState.SHUTDOWN},
        {drifted.instance_id: PowerState.SHUTDOWN},
        persistent=False,
    )
    assert {e.instance_id: e.power_state for e in plan.recreate} == {
        waiting.instance_id: PowerState.SHUTDOWN,
        reverting.instance_id: PowerState.SHUTDOWN,
    }
    assert (plan.missing, plan.drifted, plan.orphans) == ((), (), ())


@pytest.mark.parametrize(
    ("verb", "command", "vm_state", "power", "task", "ends"),
    [
        # The stop redelivered to a restarted agent of simulated hosts ran before reconcile
        # had re-created the domain, found none, and the server went to ERROR.
        (
            "stop",
            agent_bus_pb2.StopInstanceCommand,
            C.VM_STATE_ACTIVE,
            agent_bus_pb2.POWER_STATE_RUNNING,
            C.TASK_STATE_POWERING_OFF,
            agent_bus_pb2.POWER_STATE_SHUTDOWN,
        ),
        # The unshelve, likewise, found no domain, and the server stayed SHELVED.
        (
            "unshelve",
            agent_bus_pb2.UnshelveInstanceCommand,
            C.VM_STATE_SHELVED,
            agent_bus_pb2.POWER_STATE_SHUTDOWN,
            C.TASK_STATE_UNSHELVING,
            agent_bus_pb2.POWER_STATE_RUNNING,
        ),
    ],
)
async def test_a_command_for_a_domain_reconcile_may_bring_back_waits_for_that_reconcile(
    make_agent: AgentFactory,
    bus_nc: NATS,
    fleet_port: int,
    verb: str,
    command: Any,
    vm_state: Any,
    power: Any,
    task: Any,
    ends: Any,
) -> None:
    # Found by chaos scenario R2.
    spec = make_spec()
    channel = _channel(fleet_port)
    try:
        agent = make_agent(fleet=GrpcFleetView(channel))
        await agent.start()
        events = await EventReader.open(bus_nc, "h1")
        await send(
            bus_nc.jetstream(), "h1", verb, command(request_id="r1", instance_id=spec.instance_id)
        )
        # The conductor is unreachable: no reconcile yet, so no answer either.
        assert await events.none_within(1.5)

        fleet = RecordedFleet({"h1": [_record(spec, vm_state, power, task)]})
        server = await _serve_fleet(fleet, fleet_port)
        try:
            event = await events.next()
        finally:
            await server.stop(0)
        assert (event.kind, event.request_id, event.power_state) == (
            agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
            "r1",
            ends,
        )
    finally:
        await channel.close()
