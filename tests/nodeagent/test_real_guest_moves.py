"""A real QEMU guest (TCG, qemu:///system) through the agent's move steps: a resize in
place on its own host, and a move to a second agent on this machine, which refuses it (the
guest's disks cannot reach it) so the guest goes back to its source and runs again."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from loom.compute.v1 import agent_bus_pb2

from controlplane.testimage import MARKER
from nodeagent import moves
from nodeagent.driver.base import PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from nodeagent.images.cache import ImageCache
from nodeagent.images.source import LocalImageSource
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.test_real_guests import URI, GuestImages, _spec, guest_images

pytestmark = pytest.mark.qemu

__all__ = ["guest_images"]  # the module-scoped fixture, shared with test_real_guests


def _driver(images: GuestImages, host: str) -> LibvirtDriver:
    instances = images.base / host
    return LibvirtDriver(
        URI,
        host=host,
        instances_dir=instances,
        images=ImageCache(instances / "_base", LocalImageSource(images.store)),
        soft_reboot_timeout=1.0,
    )


@pytest.fixture
def two_drivers(guest_images: GuestImages) -> Iterator[tuple[LibvirtDriver, LibvirtDriver]]:
    tag = uuid.uuid4().hex[:6]
    made = [_driver(guest_images, f"qemu-src-{tag}"), _driver(guest_images, f"qemu-dst-{tag}")]
    for d in made:
        d.open()
    try:
        yield made[0], made[1]
    finally:
        for d in made:
            d.open()
            for iid in d.list_instances():
                d.destroy(iid)
            d.close()


def _boots(driver: LibvirtDriver, iid: str) -> int:
    try:
        return driver.console_output(iid, 0).count(MARKER)
    except Exception:
        return 0


def _wait_boots(driver: LibvirtDriver, iid: str, count: int, wait: float = 90) -> None:
    started = time.monotonic()
    while time.monotonic() - started < wait:
        if _boots(driver, iid) >= count:
            return
        time.sleep(0.3)
    pytest.fail(f"the guest did not reach {MARKER!r} {count} times within {wait} s")


def _cmd(
    verb: str, of: agent_bus_pb2.InstanceSpec, source: str, **kw: object
) -> agent_bus_pb2.MoveInstanceCommand:
    return agent_bus_pb2.MoveInstanceCommand(
        request_id=f"{verb}-{uuid.uuid4()}",
        migration_id=str(uuid.uuid4()),
        instance_id=of.instance_id,
        source_host=source,
        **kw,  # type: ignore[arg-type]
    )


async def test_a_real_guest_is_resized_in_place_and_survives_a_refused_move_to_another_agent(
    two_drivers: tuple[LibvirtDriver, LibvirtDriver],
    guest_images: GuestImages,
    make_agent: AgentFactory,
) -> None:
    src_driver, dst_driver = two_drivers
    src = make_agent(src_driver.host, driver=src_driver)
    dst = make_agent(dst_driver.host, driver=dst_driver)
    spec = _spec(guest_images)
    iid = spec.instance_id
    assert src_driver.create(spec) == PowerState.RUNNING
    _wait_boots(src_driver, iid, 1)

    # A resize that stays on the host: the same guest, restarted with the new memory.
    bigger = agent_bus_pb2.InstanceSpec()
    bigger.CopyFrom(spec)
    bigger.memory_mb = 256
    here = src_driver.host
    ev = await moves.execute(
        src, moves.FINISH_DEST, _cmd(moves.FINISH_DEST, bigger, here, spec=bigger, power_on=True)
    )
    assert (ev.kind, ev.power_state) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        agent_bus_pb2.POWER_STATE_RUNNING,
    )
    assert int(src_driver._require(iid).maxMemory()) == 256 * 1024
    _wait_boots(src_driver, iid, 2)

    # A move to the second agent on this machine: the source powers off, the destination
    # refuses (the guest's disks cannot reach it), the source starts the guest again.
    ev = await moves.execute(src, moves.STOP_SOURCE, _cmd(moves.STOP_SOURCE, spec, here))
    assert ev.power_state == agent_bus_pb2.POWER_STATE_SHUTDOWN
    ev = await moves.execute(
        dst, moves.FINISH_DEST, _cmd(moves.FINISH_DEST, bigger, here, spec=bigger, power_on=True)
    )
    assert (ev.kind, ev.fault.code) == (agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED, 501)
    assert dst_driver.list_instances() == {}
    ev = await moves.execute(
        src, moves.RESTORE_SOURCE, _cmd(moves.RESTORE_SOURCE, spec, here, power_on=True)
    )
    assert ev.power_state == agent_bus_pb2.POWER_STATE_RUNNING
    _wait_boots(src_driver, iid, 3)
    assert src_driver.list_instances() == {iid: PowerState.RUNNING}


async def test_an_evacuated_real_guest_boots_from_its_image_on_the_destination(
    two_drivers: tuple[LibvirtDriver, LibvirtDriver],
    guest_images: GuestImages,
    make_agent: AgentFactory,
) -> None:
    src_driver, dst_driver = two_drivers
    dst = make_agent(dst_driver.host, driver=dst_driver)
    spec = _spec(guest_images)
    iid = spec.instance_id
    assert src_driver.create(spec) == PowerState.RUNNING
    _wait_boots(src_driver, iid, 1)
    # The source host dies: its hypervisor holds the guest no more (here the two share one
    # libvirtd, so the source's domain is removed as a dead host's would be unreachable).
    src_driver.destroy(iid)

    # An ordinary move is refused (its disks would have to come from the source) ...
    gone = src_driver.host
    ev = await moves.execute(
        dst, moves.FINISH_DEST, _cmd(moves.FINISH_DEST, spec, gone, spec=spec, power_on=True)
    )
    assert (ev.kind, ev.fault.code) == (agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_FAILED, 501)
    # ... an evacuation's builds fresh disks from the image, as a boot does.
    ev = await moves.execute(
        dst,
        moves.FINISH_DEST,
        _cmd(moves.FINISH_DEST, spec, gone, spec=spec, power_on=True, from_image=True),
    )
    assert (ev.kind, ev.power_state) == (
        agent_bus_pb2.INSTANCE_EVENT_KIND_ACTION_SUCCEEDED,
        agent_bus_pb2.POWER_STATE_RUNNING,
    )
    _wait_boots(dst_driver, iid, 1)
    assert dst_driver.list_instances() == {iid: PowerState.RUNNING}
