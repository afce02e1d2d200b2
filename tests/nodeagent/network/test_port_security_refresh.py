"""A host applies the network service's newer bindings of its ports: a rule or a member
that arrives after the build changes what reaches the guest, an older binding changes
nothing, and a binding refreshed before its port's build is what the build wires."""

from __future__ import annotations

import uuid
from pathlib import Path

from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.driver import netrecords
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from nodeagent.network import HostDataPlane, port_from_proto
from tests.nodeagent.network.netlab import ALLOW_ALL_OUT, ALLOW_ICMP_IN, Lab, make_port
from tests.nodeagent.support import make_spec

GROUP = "group-0000-0001"


def _binding(
    net: str, vni: int, ip: str, n: int, revision: int, *, members: list[str], port_id: str = ""
) -> pb.PortBinding:
    """A port of the default group: everything out, ICMP in from the group's members."""
    return pb.PortBinding(
        port_id=port_id or str(uuid.uuid4()),
        network_id=net,
        segmentation_id=vni,
        mac_address=f"fa:16:3e:00:{vni % 256:02x}:{n:02x}",
        port_security_enabled=True,
        fixed_ips=[
            pb.FixedIp(
                subnet_id="subnet-0000-0001", ip_address=ip, prefixlen=24, gateway_ip="10.77.0.1"
            )
        ],
        mtu=1450,
        security_group_rules=[
            pb.SecurityGroupRule(
                rule_id="rule-out", direction=pb.RULE_DIRECTION_EGRESS, ethertype="IPv4"
            ),
            pb.SecurityGroupRule(
                rule_id="rule-icmp",
                direction=pb.RULE_DIRECTION_INGRESS,
                ethertype="IPv4",
                protocol="icmp",
                remote_group_id=GROUP,
                remote_group_member_ips=members,
            ),
        ],
        security_revision=revision,
    )


def _driver(tmp_path: Path, plane: HostDataPlane) -> LibvirtDriver:
    uri = write_simulated_node(tmp_path / "node.xml", vcpus=4, memory_mb=4096)
    return LibvirtDriver(uri, host="h1", instances_dir=tmp_path / "instances", dataplane=plane)


def test_a_member_added_after_the_build_is_let_in_and_an_older_binding_changes_nothing(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 7000 + int(lab.tag, 16) % 1000
    a_ip, b_ip = "10.77.0.21", "10.77.0.22"
    a = _binding(net, vni, a_ip, 1, revision=5, members=[a_ip])
    b = make_port(net, vni, b_ip, rules=(ALLOW_ICMP_IN, ALLOW_ALL_OUT), n=2)
    guest_a, guest_b = lab.guest(h1, port_from_proto(a)), lab.guest(h2, b)
    h2.plug(b)
    driver = _driver(tmp_path, h1)
    driver.open()
    try:
        spec = make_spec(ports=[a])
        driver.create(spec)
        assert not guest_b.ping(a_ip), "b is not yet a member of a's group"

        b_joined = _binding(net, vni, a_ip, 1, 7, members=[a_ip, b_ip], port_id=a.port_id)
        assert driver.refresh_port_security([b_joined]) == 1
        assert guest_b.ping(a_ip, count=3)
        folder = tmp_path / "instances" / spec.instance_id
        assert netrecords.bindings(folder)[0].security_revision == 7

        # A refresh that lost the race (revision 6 was read before 7): nothing changes.
        stale = _binding(net, vni, a_ip, 1, 6, members=[a_ip], port_id=a.port_id)
        assert driver.refresh_port_security([stale]) == 0
        assert guest_b.ping(a_ip)
        assert netrecords.bindings(folder)[0].security_revision == 7

        # b leaves the group: the ping stops; a still reaches b (a's egress, b's ingress).
        b_left = _binding(net, vni, a_ip, 1, 8, members=[a_ip], port_id=a.port_id)
        assert driver.refresh_port_security([b_left]) == 1
        assert not guest_b.ping(a_ip)
        assert guest_a.ping(b_ip)

        # What a restarted agent wires again is the newest binding, not the build's.
        driver.close()
        driver = _driver(tmp_path, h1)
        driver.open()
        driver.reconcile_network()
        assert not guest_b.ping(a_ip)
    finally:
        driver.close()


def test_a_binding_refreshed_before_its_build_came_is_the_one_the_build_wires(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 8000 + int(lab.tag, 16) % 1000
    c_ip, b_ip = "10.77.0.31", "10.77.0.32"
    built = _binding(net, vni, c_ip, 1, revision=9, members=[c_ip])
    refreshed = _binding(net, vni, c_ip, 1, 10, members=[c_ip, b_ip], port_id=built.port_id)
    b = make_port(net, vni, b_ip, rules=(ALLOW_ICMP_IN, ALLOW_ALL_OUT), n=2)
    lab.guest(h1, port_from_proto(built))
    guest_b = lab.guest(h2, b)
    h2.plug(b)
    driver = _driver(tmp_path, h1)
    driver.open()
    try:
        # The refresh comes first: no instance holds the port yet; it is kept for the build.
        assert driver.refresh_port_security([refreshed]) == 0
        spec = make_spec(ports=[built])
        driver.create(spec)
        assert guest_b.ping(c_ip, count=3)
        recorded = netrecords.bindings(tmp_path / "instances" / spec.instance_id)
        assert [r.security_revision for r in recorded] == [10]
        assert list((h1.config.state_dir / "port-security").glob("*.json")) == []
    finally:
        driver.close()
