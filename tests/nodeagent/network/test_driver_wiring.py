"""The driver wires ports through the data plane (a test:/// host whose data plane runs in
a lab namespace): plugged at build, wired again after a restart, gone at delete."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.driver.base import InstanceNotFound, PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from nodeagent.network import HostDataPlane, bridge_name, tap_name
from tests.nodeagent.network.netlab import Lab, sh
from tests.nodeagent.support import make_spec


def _binding(net: str, ip: str, n: int) -> pb.PortBinding:
    return pb.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=net,
        segmentation_id=3001,
        mac_address=f"fa:16:3e:77:00:{n:02x}",
        port_security_enabled=True,
        fixed_ips=[pb.FixedIp(subnet_id="subnet-0000-0077", ip_address=ip, prefixlen=24)],
    )


def _driver(tmp_path: Path, plane: HostDataPlane) -> LibvirtDriver:
    uri = write_simulated_node(tmp_path / "node.xml", vcpus=4, memory_mb=4096)
    return LibvirtDriver(uri, host="h1", instances_dir=tmp_path / "instances", dataplane=plane)


def _links(plane: HostDataPlane) -> str:
    return sh("ip", "-o", "link", netns=plane.config.netns)


def test_ports_are_wired_at_build_rewired_after_a_restart_or_at_start_and_removed_at_delete(
    lab: Lab, tmp_path: Path
) -> None:
    plane, _ = lab.hosts(2, tmp_path)
    net = str(uuid.uuid4())
    port = _binding(net, "10.77.0.51", 1)
    spec = make_spec(ports=[port])
    driver = _driver(tmp_path, plane)
    driver.open()
    try:
        assert driver.create(spec) == PowerState.RUNNING
        assert tap_name(port.port_id) in _links(plane)
        assert plane.state().ports == {port.port_id: net}

        # Lost while the guest is off: starting it wires the port first.
        assert driver.stop(spec.instance_id, 0) == PowerState.SHUTDOWN
        plane.reconcile([])
        assert driver.start(spec.instance_id) == PowerState.RUNNING
        assert plane.state().ports == {port.port_id: net}

        # The host rebooted: its taps, bridges and chains are gone.
        plane.reconcile([])
        assert bridge_name(net) not in _links(plane)
        driver.close()
        driver = _driver(tmp_path, plane)
        driver.open()
        driver.reconcile_network()
        assert plane.state().ports == {port.port_id: net}
        assert plane.firewall.port_keys() == {port.port_id[:11]}

        driver.destroy(spec.instance_id)
        assert plane.state().ports == {}
        assert bridge_name(net) not in _links(plane)
        assert plane.firewall.chains() == []
    finally:
        driver.close()


def test_rewiring_a_running_instance_makes_its_lost_tap_bridge_and_chains_again(
    lab: Lab, tmp_path: Path
) -> None:
    plane, _ = lab.hosts(2, tmp_path)
    net = str(uuid.uuid4())
    port = _binding(net, "10.77.0.52", 2)
    spec = make_spec(ports=[port])
    driver = _driver(tmp_path, plane)
    driver.open()
    try:
        assert driver.create(spec) == PowerState.RUNNING
        # Someone flushed the host's network: the guest runs on, unreachable.
        plane.reconcile([])
        assert tap_name(port.port_id) not in _links(plane)
        assert plane.firewall.chains() == []

        assert driver.rewire(spec.instance_id) == 1
        assert tap_name(port.port_id) in _links(plane)
        assert plane.state().ports == {port.port_id: net}
        assert plane.firewall.port_keys() == {port.port_id[:11]}
        assert driver.describe(spec.instance_id) == PowerState.RUNNING  # never restarted
        assert driver.rewire(spec.instance_id) == 1  # idempotent
        assert plane.state().ports == {port.port_id: net}
    finally:
        driver.close()


def test_rewiring_an_instance_that_is_not_here_is_instance_not_found(
    lab: Lab, tmp_path: Path
) -> None:
    plane, _ = lab.hosts(2, tmp_path)
    driver = _driver(tmp_path, plane)
    driver.open()
    try:
        with pytest.raises(InstanceNotFound):
            driver.rewire(str(uuid.uuid4()))
    finally:
        driver.close()
