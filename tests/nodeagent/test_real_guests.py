"""Real guests: QEMU (TCG here) through libvirtd on qemu:///system.

Each boot costs about 8 s of emulation on two cores, so the module boots two guests in
all: one walks the driver through its whole lifecycle, the other goes through the agent
over NATS and powers itself off. Both boot Loom's test image (a Debian kernel and a
busybox initramfs) from a local image store, through the image cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from loom.compute.v1 import agent_bus_pb2
from nats.aio.client import Client as NATS

from controlplane.testimage import MARKER, build_test_image
from nodeagent import messages as m
from nodeagent.driver.base import BuildFailed, InstanceNotFound, PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver
from nodeagent.images.cache import ImageCache
from nodeagent.images.disks import GIB
from nodeagent.images.source import LocalImageSource
from tests.nodeagent.conftest import AgentFactory
from tests.nodeagent.support import EventReader, build_command, send
from tests.support.libvirtd import SYSTEM_URI, require_libvirtd

pytestmark = pytest.mark.qemu

URI = SYSTEM_URI
ROOT_IMAGE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class GuestImages:
    """A local image store holding the test guest as Image v2 would: kernel, ramdisk and a
    small raw root disk, with the root disk's sha512."""

    base: Path
    store: Path
    kernel_id: str
    ramdisk_id: str
    root_id: str
    root_sha512: str

    def image_ref(self, cmdline: str = "console=ttyS0") -> agent_bus_pb2.ImageRef:
        return agent_bus_pb2.ImageRef(
            id=self.root_id,
            disk_format="raw",
            size=ROOT_IMAGE_BYTES,
            hash_value=self.root_sha512,
            hash_algo="sha512",
            kernel_id=self.kernel_id,
            ramdisk_id=self.ramdisk_id,
            properties={"os_command_line": cmdline},
        )


@pytest.fixture(scope="module")
def guest_images() -> Iterator[GuestImages]:
    require_libvirtd(URI)
    # QEMU runs as an unprivileged user: pytest's 0700 temp root would lock it out.
    base = Path(tempfile.mkdtemp(prefix="loom-qemu-test-", dir="/var/tmp"))
    base.chmod(0o755)
    try:
        built = build_test_image(base / "build")
        store = base / "images"
        store.mkdir()
        ids = {name: str(uuid.uuid4()) for name in ("kernel", "ramdisk", "root")}
        shutil.copyfile(built.kernel, store / ids["kernel"])
        shutil.copyfile(built.initrd, store / ids["ramdisk"])
        root = b"\0" * ROOT_IMAGE_BYTES
        (store / ids["root"]).write_bytes(root)
        yield GuestImages(
            base=base,
            store=store,
            kernel_id=ids["kernel"],
            ramdisk_id=ids["ramdisk"],
            root_id=ids["root"],
            root_sha512=hashlib.sha512(root).hexdigest(),
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def qemu_driver(guest_images: GuestImages) -> Iterator[LibvirtDriver]:
    """A driver for a host of this test's own on qemu:///system; whatever the test leaves
    on libvirt is destroyed afterwards."""
    host = f"qemu-test-{uuid.uuid4().hex[:8]}"
    instances = guest_images.base / host
    driver = LibvirtDriver(
        URI,
        host=host,
        instances_dir=instances,
        images=ImageCache(instances / "_base", LocalImageSource(guest_images.store)),
        soft_reboot_timeout=1.0,
    )
    driver.open()
    try:
        yield driver
    finally:
        driver.open()  # an agent that owned the driver closed it
        for iid in driver.list_instances():
            driver.destroy(iid)
        driver.close()


def _spec(images: GuestImages, cmdline: str = "console=ttyS0") -> agent_bus_pb2.InstanceSpec:
    iid = str(uuid.uuid4())
    return agent_bus_pb2.InstanceSpec(
        instance_id=iid,
        instance_name=f"loom-test-{iid[:8]}",
        project_id="p-1",
        vcpus=1,
        memory_mb=128,
        root_gb=1,
        image=images.image_ref(cmdline),
        display_name="real guest",
    )


def _wait_for_marker(
    driver: LibvirtDriver, iid: str, text: str = MARKER, wait: float = 60
) -> float:
    """Seconds until the serial log holds `text`; fails after `wait` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < wait:
        try:
            if text in driver.console_output(iid, 0):
                return time.monotonic() - started
        except Exception:
            pass  # no serial output yet
        time.sleep(0.2)
    pytest.fail(f"no {text!r} in the console within {wait} s")


def _vnc_greeting(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=5) as conn:
        return conn.recv(12)


def _domain_names() -> set[str]:
    conn = libvirt.open(URI)
    try:
        return {str(d.name()) for d in conn.listAllDomains(0)}
    finally:
        conn.close()


def test_a_host_without_hardware_kvm_runs_guests_under_tcg(qemu_driver: LibvirtDriver) -> None:
    if any(Path("/sys/module", mod).exists() for mod in ("kvm_intel", "kvm_amd")):
        pytest.skip("this host has hardware KVM")
    # Where /dev/kvm exists without a vendor module (a paravirtual nested one, as on
    # Loom's build machines), libvirt still offers kvm; a stock kernel would hang.
    assert qemu_driver.domain_type == "qemu"


def test_a_build_whose_image_fails_verification_leaves_nothing(
    qemu_driver: LibvirtDriver, guest_images: GuestImages
) -> None:
    spec = _spec(guest_images)
    spec.image.hash_value = hashlib.sha512(b"not the image").hexdigest()
    with pytest.raises(BuildFailed, match="failed verification"):
        qemu_driver.create(spec)
    assert spec.instance_name not in _domain_names()
    assert not (qemu_driver.instances_dir / spec.instance_id).exists()
    assert qemu_driver.images is not None
    assert guest_images.root_id not in qemu_driver.images.cached()


def test_a_real_guest_boots_shows_vnc_and_survives_its_whole_lifecycle(
    qemu_driver: LibvirtDriver, guest_images: GuestImages
) -> None:
    spec = _spec(guest_images)
    iid = spec.instance_id
    folder = qemu_driver.instances_dir / iid
    assert qemu_driver.create(spec) == PowerState.RUNNING
    _wait_for_marker(qemu_driver, iid)

    disk = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--force-share", "--output=json", str(folder / "disk")],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert qemu_driver.images is not None
    assert disk["format"] == "qcow2"
    assert disk["backing-filename"] == str(qemu_driver.images.path_of(guest_images.root_id))
    assert disk["virtual-size"] == 1 * GIB

    endpoint = qemu_driver.console_endpoint(iid)
    assert endpoint.host == "127.0.0.1"
    assert _vnc_greeting(endpoint.host, endpoint.port) == b"RFB 003.008\n"
    _wait_for_marker(qemu_driver, iid, text="loom test guest: ")
    with pytest.raises(InstanceNotFound):
        qemu_driver.console_endpoint(str(uuid.uuid4()))

    # The busybox guest ignores ACPI, so stop must give up waiting and force it off.
    started = time.monotonic()
    assert qemu_driver.stop(iid, timeout=2) == PowerState.SHUTDOWN
    assert time.monotonic() - started < 2 + 10
    # Off, the log stands still: its tail is exactly the last lines of the whole.
    whole = qemu_driver.console_output(iid, 0)
    assert qemu_driver.console_output(iid, 2) == "\n".join(whole.splitlines()[-2:])
    assert len(whole.splitlines()) > 2
    assert qemu_driver.start(iid) == PowerState.RUNNING
    assert qemu_driver.reboot(iid, hard=False) == PowerState.RUNNING
    assert qemu_driver.reboot(iid, hard=True) == PowerState.RUNNING
    assert qemu_driver.list_instances() == {iid: PowerState.RUNNING}

    qemu_driver.destroy(iid)
    assert spec.instance_name not in _domain_names()
    assert not folder.exists()  # overlay, console log and folder all gone
    assert qemu_driver.list_instances() == {}


async def test_a_guest_built_over_nats_boots_and_its_own_poweroff_is_reported(
    qemu_driver: LibvirtDriver,
    guest_images: GuestImages,
    make_agent: AgentFactory,
    bus_nc: NATS,
) -> None:
    agent = make_agent(qemu_driver.host, driver=qemu_driver, power_sync_interval=1.0)
    events = await EventReader.open(bus_nc, qemu_driver.host)
    await agent.start()
    spec = _spec(guest_images, cmdline="console=ttyS0 loom_poweroff=2")
    js = bus_nc.jetstream()

    sent = time.monotonic()
    await send(js, qemu_driver.host, "build", build_command(spec))
    built = await events.next(wait=60)
    assert built.kind == m.BUILD_SUCCEEDED
    await asyncio.to_thread(_wait_for_marker, qemu_driver, spec.instance_id)
    boot_s = time.monotonic() - sent
    print(f"\nreal guest: build command to {MARKER} in {boot_s:.1f} s")
    assert boot_s < 60

    changed = await events.next(wait=30)
    assert changed.kind == m.POWER_STATE_CHANGED
    assert changed.instance_id == spec.instance_id
    assert m.power_from_pb(changed.power_state) == PowerState.SHUTDOWN

    delete = agent_bus_pb2.DeleteInstanceCommand(
        request_id=f"req-{uuid.uuid4()}", instance_id=spec.instance_id
    )
    await send(js, qemu_driver.host, "delete", delete)
    assert (await events.next(wait=30)).kind == m.DELETED
    assert spec.instance_name not in _domain_names()
    assert not (qemu_driver.instances_dir / spec.instance_id).exists()


def _defined_xml(driver: LibvirtDriver, iid: str) -> ET.Element:
    # Tests may look behind the boundary to read what libvirt was given.
    return ET.fromstring(driver._c.lookupByUUIDString(iid).XMLDesc(0))


@pytest.mark.parametrize("disk_format", ["raw", "qcow2"])
def test_a_whole_disk_image_boots_from_an_overlay_with_no_kernel(
    qemu_driver: LibvirtDriver, guest_images: GuestImages, disk_format: str
) -> None:
    image_id = str(uuid.uuid4())
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", disk_format, str(guest_images.store / image_id), "8M"],
        check=True,
    )
    spec = _spec(guest_images)
    spec.image.CopyFrom(agent_bus_pb2.ImageRef(id=image_id, disk_format=disk_format))
    spec.ephemeral_gb = 1
    # Defined only: a guest without an OS on its disk has nothing to show when started.
    assert qemu_driver.create(spec, power_on=False) == PowerState.SHUTDOWN
    xml = _defined_xml(qemu_driver, spec.instance_id)
    assert xml.find("./os/kernel") is None
    assert xml.find("./os/boot").get("dev") == "hd"  # type: ignore[union-attr]
    folder = qemu_driver.instances_dir / spec.instance_id
    disks = {
        d.find("target").get("dev"): d.find("source").get("file")  # type: ignore[union-attr]
        for d in xml.findall("./devices/disk")
    }
    assert disks == {"vda": str(folder / "disk"), "vdb": str(folder / "disk.eph0")}
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(folder / "disk")],
            capture_output=True,
            check=True,
        ).stdout
    )
    assert info["backing-filename-format"] == disk_format
    assert info["virtual-size"] == 1 * GIB


def test_a_kernel_boot_without_a_command_line_property_gets_the_serial_console(
    qemu_driver: LibvirtDriver, guest_images: GuestImages
) -> None:
    spec = _spec(guest_images)
    del spec.image.properties["os_command_line"]
    qemu_driver.create(spec, power_on=False)
    os_el = _defined_xml(qemu_driver, spec.instance_id).find("./os")
    assert os_el is not None
    assert qemu_driver.images is not None
    assert os_el.findtext("cmdline") == "console=ttyS0"
    assert os_el.findtext("kernel") == str(qemu_driver.images.path_of(guest_images.kernel_id))
    assert os_el.findtext("initrd") == str(qemu_driver.images.path_of(guest_images.ramdisk_id))


def test_a_real_guest_pauses_in_memory_and_suspends_to_disk_and_comes_back(
    qemu_driver: LibvirtDriver, guest_images: GuestImages
) -> None:
    spec = _spec(guest_images)
    iid = spec.instance_id
    assert qemu_driver.create(spec) == PowerState.RUNNING
    _wait_for_marker(qemu_driver, iid)
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByUUIDString(iid)
        assert qemu_driver.pause(iid) == PowerState.PAUSED
        assert dom.isActive()  # the QEMU process and its memory stay
        assert qemu_driver.pause(iid) == PowerState.PAUSED
        assert qemu_driver.list_instances() == {iid: PowerState.PAUSED}
        assert qemu_driver.unpause(iid) == PowerState.RUNNING

        assert qemu_driver.suspend(iid) == PowerState.SUSPENDED
        assert not dom.isActive()  # no QEMU process: the memory is on disk
        assert dom.hasManagedSaveImage(0)
        assert qemu_driver.list_instances() == {iid: PowerState.SUSPENDED}
        assert qemu_driver.resume(iid) == PowerState.RUNNING
        assert not dom.hasManagedSaveImage(0)

        # A suspended guest is deleted with its saved memory.
        assert qemu_driver.suspend(iid) == PowerState.SUSPENDED
        qemu_driver.destroy(iid)
        assert spec.instance_name not in _domain_names()
    finally:
        conn.close()
