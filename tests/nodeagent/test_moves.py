"""The agent's move steps (nodeagent/moves.py) and the driver's part in them."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2

from nodeagent.driver.base import BuildFailed, PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, make_spec, send


def test_a_destination_sharing_the_hypervisor_never_takes_over_the_sources_domain(
    tmp_path: Path,
) -> None:
    # Two hosts on one libvirt (test:///default is shared by the process, as one
    # qemu:///system is by two agents on one machine): one UUID, one domain.
    source = LibvirtDriver("test:///default", host="mv-a", instances_dir=tmp_path / "a", disk_gb=1)
    dest = LibvirtDriver("test:///default", host="mv-b", instances_dir=tmp_path / "b", disk_gb=1)
    source.open()
    dest.open()
    spec = make_spec()
    try:
        source.create(spec)
        source.stop(spec.instance_id, 1)
        bigger = agent_bus_pb2.InstanceSpec()
        bigger.CopyFrom(spec)
        bigger.memory_mb = 1024
        with pytest.raises(BuildFailed, match="already defines"):
            dest.create(bigger)
        # The source's domain is untouched and still the source's.
        assert source.describe(spec.instance_id) == PowerState.SHUTDOWN
        assert spec.instance_id not in dest.list_instances()
        fresh = LibvirtDriver(
            "test:///default", host="mv-a", instances_dir=tmp_path / "a", disk_gb=1
        )
        fresh.open()
        try:
            assert spec.instance_id in fresh.list_instances()
        finally:
            fresh.close()
    finally:
        source.destroy(spec.instance_id)
        source.close()
        dest.close()


def _move(
    verb: str, of: agent_bus_pb2.InstanceSpec, **kw: object
) -> agent_bus_pb2.MoveInstanceCommand:
    mig = str(kw.pop("migration_id", "m-1"))
    return agent_bus_pb2.MoveInstanceCommand(
        request_id=f"{verb}-{mig}-{uuid.uuid4().hex[:4]}",
        migration_id=mig,
        instance_id=of.instance_id,
        **kw,  # type: ignore[arg-type]
    )


async def test_each_move_step_answers_with_its_verb_and_migration_and_is_idempotent(
    make_agent: AgentFactory, bus_nc: object, tmp_path: Path
) -> None:
    src, dst = make_agent("src"), make_agent("dst")
    await src.start()
    await dst.start()
    js = src._js
    spec = make_spec()
    await src.call_driver(src.driver.create, spec)
    src_events = await EventReader.open(bus_nc, "src")  # type: ignore[arg-type]
    dst_events = await EventReader.open(bus_nc, "dst")  # type: ignore[arg-type]

    await send(js, "src", "move_stop_source", _move("move_stop_source", spec))
    ev = await src_events.next()
    assert (ev.action, ev.migration_id, ev.kind) == (
        "move_stop_source",
        "m-1",
        agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
    )
    assert ev.power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN

    for _ in range(2):  # a resend of the step defines nothing more
        cmd = _move("move_finish_dest", spec, spec=spec, power_on=True, source_host="src")
        await send(js, "dst", "move_finish_dest", cmd)
        ev = await dst_events.next()
        assert (ev.action, ev.power_state) == (
            "move_finish_dest",
            agent_bus_pb2.POWER_STATE_RUNNING,
        )
    assert list(dst.driver.list_instances()) == [spec.instance_id]

    for _ in range(2):  # dropping what is already gone succeeds
        await send(js, "src", "move_drop", _move("move_drop", spec))
        ev = await src_events.next()
        assert (ev.action, ev.kind) == (
            "move_drop",
            agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        )
    assert src.driver.list_instances() == {}

    # Restoring a source that holds nothing any more is a failure with a 404 fault.
    await send(js, "src", "move_restore_source", _move("move_restore_source", spec, power_on=True))
    ev = await src_events.next()
    assert (ev.kind, ev.fault.code) == (agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED, 404)
