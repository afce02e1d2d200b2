"""The libvirt driver on test:///: the Driver contract, verb by verb."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest
from loom.compute.v1 import agent_bus_pb2

from nodeagent.driver.base import (
    BuildFailed,
    ConsoleDriver,
    Driver,
    InstanceNotFound,
    NotSupported,
    PowerState,
)
from nodeagent.driver.libvirt_driver import LibvirtDriver
from tests.nodeagent.support import make_spec, make_test_driver


def _domain_id(driver: LibvirtDriver, instance_id: str) -> int:
    # Tests may look behind the boundary: libvirt's runtime id changes on every start.
    return int(driver._c.lookupByUUIDString(instance_id).ID())


def test_the_libvirt_driver_offers_the_driver_and_console_protocols(driver: LibvirtDriver) -> None:
    assert isinstance(driver, Driver)
    assert isinstance(driver, ConsoleDriver)


def test_create_leaves_the_instance_running(driver: LibvirtDriver) -> None:
    spec = make_spec()
    assert driver.create(spec) == PowerState.RUNNING
    assert driver.list_instances() == {spec.instance_id: PowerState.RUNNING}


def test_create_without_power_on_leaves_it_defined_and_shut_off(driver: LibvirtDriver) -> None:
    spec = make_spec()
    assert driver.create(spec, power_on=False) == PowerState.SHUTDOWN
    assert driver.describe(spec.instance_id) == PowerState.SHUTDOWN


def test_creating_an_existing_instance_again_changes_nothing(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    first_id = _domain_id(driver, spec.instance_id)
    assert driver.create(spec) == PowerState.RUNNING
    assert _domain_id(driver, spec.instance_id) == first_id
    assert len(driver.list_instances()) == 1


def test_stop_then_start_round_trips_the_power_state(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    assert driver.stop(spec.instance_id, timeout=1) == PowerState.SHUTDOWN
    assert driver.stop(spec.instance_id, timeout=1) == PowerState.SHUTDOWN
    assert driver.start(spec.instance_id) == PowerState.RUNNING
    assert driver.start(spec.instance_id) == PowerState.RUNNING


def test_stop_with_no_grace_forces_the_domain_off(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    assert driver.stop(spec.instance_id, timeout=0) == PowerState.SHUTDOWN


def test_a_hard_reboot_power_cycles_the_domain(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    before = _domain_id(driver, spec.instance_id)
    assert driver.reboot(spec.instance_id, hard=True) == PowerState.RUNNING
    assert _domain_id(driver, spec.instance_id) != before


def test_a_soft_reboot_keeps_the_instance_running(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    assert driver.reboot(spec.instance_id, hard=False) == PowerState.RUNNING


def test_rebooting_a_shut_off_instance_starts_it(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec, power_on=False)
    assert driver.reboot(spec.instance_id, hard=False) == PowerState.RUNNING


def test_destroy_removes_the_domain_and_its_folder(driver: LibvirtDriver) -> None:
    spec = make_spec()
    driver.create(spec)
    folder = driver.instances_dir / spec.instance_id
    assert folder.is_dir()
    driver.destroy(spec.instance_id)
    assert driver.list_instances() == {}
    assert not folder.exists()


def test_destroying_an_absent_instance_succeeds(driver: LibvirtDriver) -> None:
    driver.destroy(str(uuid.uuid4()))
    assert driver.list_instances() == {}


def test_verbs_on_an_absent_instance_raise_instance_not_found(driver: LibvirtDriver) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: driver.start(missing),
        lambda: driver.stop(missing, 1),
        lambda: driver.reboot(missing, hard=True),
        lambda: driver.describe(missing),
        lambda: driver.diagnostics(missing),
    ):
        with pytest.raises(InstanceNotFound):
            call()


def test_two_simulated_hosts_in_one_process_do_not_see_each_others_domains(
    tmp_path: Path,
) -> None:
    a, b = make_test_driver(tmp_path, "sim-a"), make_test_driver(tmp_path, "sim-b")
    a.open()
    b.open()
    try:
        spec = make_spec()
        a.create(spec)
        assert list(a.list_instances()) == [spec.instance_id]
        assert b.list_instances() == {}
        with pytest.raises(InstanceNotFound):
            b.describe(spec.instance_id)
        b.destroy(spec.instance_id)  # absent on b: a no-op that must not reach a's domain
        assert a.describe(spec.instance_id) == PowerState.RUNNING
    finally:
        a.close()
        b.close()


def test_hosts_sharing_one_connection_list_only_their_own_domains(tmp_path: Path) -> None:
    # test:///default is shared by the whole process, as a qemu:///system may be.
    a = LibvirtDriver("test:///default", host="share-a", instances_dir=tmp_path / "a", disk_gb=1)
    b = LibvirtDriver("test:///default", host="share-b", instances_dir=tmp_path / "b", disk_gb=1)
    a.open()
    b.open()
    spec = make_spec()
    try:
        a.create(spec)
        assert spec.instance_id in a.list_instances()
        assert spec.instance_id not in b.list_instances()
        # libvirt's own sample domain on test:///default is not a Loom domain.
        assert len(a.list_instances()) == 1
    finally:
        a.destroy(spec.instance_id)
        a.close()
        b.close()


def test_a_build_libvirt_refuses_leaves_nothing_behind(driver: LibvirtDriver) -> None:
    # libvirt rejects a domain with no vCPUs when it is defined.
    spec = make_spec(vcpus=0)
    with pytest.raises(BuildFailed, match="could not define the domain"):
        driver.create(spec)
    assert driver.list_instances() == {}
    assert not (driver.instances_dir / spec.instance_id).exists()


def test_a_failed_build_never_touches_the_instance_that_holds_its_name(
    driver: LibvirtDriver,
) -> None:
    first = make_spec()
    driver.create(first)
    clash = make_spec(instance_name=first.instance_name)
    with pytest.raises(BuildFailed):
        driver.create(clash)
    assert driver.list_instances() == {first.instance_id: PowerState.RUNNING}
    assert (driver.instances_dir / first.instance_id).is_dir()
    assert not (driver.instances_dir / clash.instance_id).exists()


def test_host_facts_reflect_the_simulated_node(driver: LibvirtDriver) -> None:
    facts = driver.host_facts()
    assert (facts.vcpus, facts.memory_mb, facts.disk_gb) == (8, 16384, 100)
    assert facts.hypervisor_type == "test"
    assert facts.hypervisor_version > 0


def test_diagnostics_describe_the_running_domain(driver: LibvirtDriver) -> None:
    spec = make_spec(vcpus=2, memory_mb=768)
    driver.create(spec)
    diag = driver.diagnostics(spec.instance_id)
    assert (diag.power_state, diag.vcpus, diag.memory_mb) == (PowerState.RUNNING, 2, 768)


def test_the_test_hypervisor_refuses_consoles_rather_than_inventing_them(
    driver: LibvirtDriver,
) -> None:
    spec = make_spec()
    driver.create(spec)
    with pytest.raises(NotSupported, match="serial console"):
        driver.console_output(spec.instance_id, 10)
    with pytest.raises(NotSupported, match="VNC"):
        driver.console_endpoint(spec.instance_id)


def test_a_domain_that_loom_did_not_define_is_not_listed(driver: LibvirtDriver) -> None:
    driver._c.defineXML(
        "<domain type='test'><name>foreign</name><memory>1024</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )
    assert driver.list_instances() == {}
    assert len(driver._c.listAllDomains(0)) == 1
    assert isinstance(driver._c, libvirt.virConnect)


def test_a_simulated_host_builds_an_instance_with_ports_as_nics_in_its_domain_xml(
    driver: LibvirtDriver,
) -> None:
    port = agent_bus_pb2.PortBinding(
        port_id="0b7e6a57-8f0e-4c7b-9d51-9a0f2f6a1c01",
        network_id="5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d",
        segmentation_id=1001,
        mac_address="fa:16:3e:00:00:01",
    )
    spec = make_spec(ports=[port])
    assert driver.create(spec) == PowerState.RUNNING
    xml = driver._c.lookupByUUIDString(spec.instance_id).XMLDesc(0)
    assert "fa:16:3e:00:00:01" in xml
    driver.destroy(spec.instance_id)


def test_a_port_with_a_bad_mac_fails_the_build_with_a_sentence_and_leaves_nothing(
    driver: LibvirtDriver,
) -> None:
    port = agent_bus_pb2.PortBinding(
        port_id="0b7e6a57-8f0e-4c7b-9d51-9a0f2f6a1c01",
        network_id="5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d",
        segmentation_id=1001,
        mac_address="not-a-mac",
    )
    spec = make_spec(ports=[port])
    with pytest.raises(BuildFailed, match="mac_address is not a MAC address"):
        driver.create(spec)
    assert spec.instance_id not in driver.list_instances()
    assert not (driver.instances_dir / spec.instance_id).exists()
