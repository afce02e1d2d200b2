"""Distributed DHCP and the metadata service: every host with a port on a network serves
that network's DHCP (same address and MAC everywhere) and metadata to its own guests only,
isolated from the VXLAN; the driver runs them from the build command's `dhcp` and serves
them again from the instance folder after a restart."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.driver.base import BuildFailed, PowerState
from nodeagent.driver.libvirt_driver import LibvirtDriver, write_simulated_node
from nodeagent.network import (
    DhcpLease,
    DhcpSubnet,
    HostDataPlane,
    NetworkDhcp,
    bridge_name,
    port_from_proto,
)
from nodeagent.network.names import dhcp_bridge_end
from tests.nodeagent.network.netlab import (
    ALLOW_ALL_OUT,
    ALLOW_ICMP_IN,
    Guest,
    Lab,
    make_port,
    sh,
)
from tests.nodeagent.support import make_spec

SERVER_IP, SERVER_MAC = "10.77.0.2", "fa:16:3e:dd:00:02"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxvb20ta2V5LWJsb2ItZm9yLXRlc3RzLW9ubHk loom@test"


def _udhcpc(netns: str, tmp_path: Path) -> str:
    """busybox udhcpc in `netns`: configures eth0 and its classless static routes as a
    guest would, and prints what it was given."""
    script = tmp_path / f"udhcpc-{netns}.sh"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = bound ]; then\n'
        '  ip addr add "$ip/$mask" dev "$interface"\n'
        "  set -- $staticroutes\n"
        '  while [ $# -ge 2 ]; do ip route replace "$1" via "$2" dev "$interface"; shift 2; done\n'
        '  echo "BOUND ip=$ip mask=$mask router=$router routes=$staticroutes"\n'
        "fi\n"
        "exit 0\n"
    )
    script.chmod(0o755)
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            netns,
            "busybox",
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-O",
            "staticroutes",
            "-s",
            str(script),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return proc.stdout + proc.stderr


def _get(netns: str, path: str) -> tuple[int, bytes]:
    """GET http://169.254.169.254<path> from inside `netns`: (status, body)."""
    code = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://169.254.169.254{path}', timeout=5)\n"
        "    status, body = r.status, r.read()\n"
        "except urllib.error.HTTPError as e:\n"
        "    status, body = e.code, e.read()\n"
        "sys.stdout.write(str(status) + '\\n')\n"
        "sys.stdout.flush()\n"
        "sys.stdout.buffer.write(body)\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-I", "-c", code],
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    status, _, body = out.partition(b"\n")
    return int(status), body


def _dhcp(net: str, vni: int, leases: tuple[DhcpLease, ...], dns: str = "10.77.0.1") -> NetworkDhcp:
    subnet = DhcpSubnet("subnet-0000-0001", "10.77.0.0/24", SERVER_IP, "10.77.0.1", (dns,))
    return NetworkDhcp(net, vni, (subnet,), leases, 1450, SERVER_MAC)


def _dhcp_log(plane: HostDataPlane, net: str) -> str:
    path = plane.dhcp.folder(net) / "log"
    return path.read_text() if path.exists() else ""


def _isolated(plane: HostDataPlane, dev: str) -> bool:
    out = sh("bridge", "-j", "-d", "link", "show", "dev", dev, netns=plane.config.netns)
    return bool(json.loads(out)[0]["isolated"])


def test_each_host_answers_dhcp_for_its_own_guests_only_and_guests_still_ping_across_vxlan(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 7000 + int(lab.tag, 16) % 1000
    rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
    p1 = make_port(net, vni, "10.77.0.31", rules=rules, n=1)
    p2 = make_port(net, vni, "10.77.0.32", rules=rules, n=2)
    # The same service on both hosts: same server address and MAC, every lease.
    dhcp = _dhcp(net, vni, (DhcpLease(p1.mac, "10.77.0.31"), DhcpLease(p2.mac, "10.77.0.32")))
    g1 = lab.guest(h1, p1, configure_ip=False)
    g2 = lab.guest(h2, p2, configure_ip=False)
    h1.plug(p1, dhcp)
    h2.plug(p2, dhcp)
    h1.plug(p1, dhcp)  # idempotent
    # Reloading DHCP alone keeps the metadata address beside the server's.
    h1.dhcp.ensure(dhcp)
    inner = sh("ip", "-4", "-o", "addr", "show", netns=h1.dhcp.namespace(net))
    assert " 169.254.169.254/32 " in inner, inner
    assert f" {SERVER_IP}/24 " in inner, inner
    for plane in (h1, h2):
        assert _isolated(plane, dhcp_bridge_end(net))
        assert _isolated(plane, f"vxlan-{vni}")

    out1 = _udhcpc(g1.netns, tmp_path)
    assert "BOUND ip=10.77.0.31 mask=24 router=10.77.0.1" in out1, out1
    assert f"routes=169.254.169.254/32 {SERVER_IP} 0.0.0.0/0 10.77.0.1" in out1, out1
    out2 = _udhcpc(g2.netns, tmp_path)
    assert "BOUND ip=10.77.0.32" in out2, out2

    # Each guest's broadcasts crossed the VXLAN, but only its own host's dnsmasq heard it.
    log1, log2 = _dhcp_log(h1, net), _dhcp_log(h2, net)
    assert p1.mac in log1, log1
    assert p2.mac not in log1, log1
    assert p2.mac in log2, log2
    assert p1.mac not in log2, log2

    # Guests are not isolated: they still reach each other across the VXLAN.
    assert g1.ping("10.77.0.32", count=3)
    assert g2.ping("10.77.0.31")

    h1.unplug(p1.port_id)
    h2.unplug(p2.port_id)
    for plane in (h1, h2):
        assert plane.dhcp.pid(net) is None
        assert plane.metadata.pid(net) is None
        assert not Path(f"/var/run/netns/{plane.dhcp.namespace(net)}").exists()


# -- through the driver: the build command's DHCP services and the metadata service -------


def _binding(net: str, vni: int, ip: str, n: int) -> pb.PortBinding:
    return pb.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=net,
        segmentation_id=vni,
        mac_address=f"fa:16:3e:88:00:{n:02x}",
        mtu=1450,
        port_security_enabled=True,
        fixed_ips=[
            pb.FixedIp(
                subnet_id="subnet-0000-0001", ip_address=ip, prefixlen=24, gateway_ip="10.77.0.1"
            )
        ],
        security_group_rules=[
            pb.SecurityGroupRule(direction=pb.RULE_DIRECTION_EGRESS, ethertype="IPv4"),
        ],
    )


def _dhcp_msg(
    net: str, vni: int, ports: list[pb.PortBinding], dns: str = "10.77.0.1"
) -> pb.NetworkDhcp:
    return pb.NetworkDhcp(
        network_id=net,
        vni=vni,
        mtu=1450,
        dhcp_mac_address=SERVER_MAC,
        subnets=[
            pb.DhcpSubnet(
                subnet_id="subnet-0000-0001",
                cidr="10.77.0.0/24",
                gateway_ip="10.77.0.1",
                dns_nameservers=[dns],
                dhcp_server_ip=SERVER_IP,
            )
        ],
        leases=[
            pb.DhcpLease(
                mac_address=p.mac_address, ip_address=p.fixed_ips[0].ip_address, hostname=f"vm{n}"
            )
            for n, p in enumerate(ports)
        ],
    )


def _driver(tmp_path: Path, plane: HostDataPlane) -> LibvirtDriver:
    uri = write_simulated_node(tmp_path / "node.xml", vcpus=4, memory_mb=4096)
    return LibvirtDriver(uri, host="h1", instances_dir=tmp_path / "instances", dataplane=plane)


def _guest(lab: Lab, plane: HostDataPlane, binding: pb.PortBinding) -> Guest:
    return lab.guest(plane, port_from_proto(binding), configure_ip=False)


@pytest.fixture
def driver_and_plane(lab: Lab, tmp_path: Path) -> tuple[LibvirtDriver, HostDataPlane]:
    plane, _ = lab.hosts(2, tmp_path)
    driver = _driver(tmp_path, plane)
    driver.open()
    return driver, plane


def test_a_guest_reads_its_own_metadata_at_169_254_169_254_and_another_source_gets_404(
    lab: Lab, tmp_path: Path, driver_and_plane: tuple[LibvirtDriver, HostDataPlane]
) -> None:
    driver, plane = driver_and_plane
    net, vni = str(uuid.uuid4()), 3100 + int(lab.tag, 16) % 500
    a = _binding(net, vni, "10.77.0.41", 1)
    b = _binding(net, vni, "10.77.0.42", 2)
    stranger = _binding(net, vni, "10.77.0.43", 3)
    ga, gb = _guest(lab, plane, a), _guest(lab, plane, b)
    user_data = b"#!/bin/sh\necho loom-metadata-user-data\n"
    spec_a = make_spec(
        ports=[a],
        hostname="vm-a",
        key_name="k1",
        key_data=KEY,
        user_data=base64.b64encode(user_data).decode(),
        availability_zone="az-1",
    )
    spec_b = make_spec(ports=[b], hostname="vm-b")
    try:
        assert driver.create(spec_a, dhcp=[_dhcp_msg(net, vni, [a, b])]) == PowerState.RUNNING
        assert driver.create(spec_b, dhcp=[_dhcp_msg(net, vni, [a, b])]) == PowerState.RUNNING
        for guest in (ga, gb):
            assert "BOUND" in _udhcpc(guest.netns, tmp_path)

        status, body = _get(ga.netns, "/openstack/latest/meta_data.json")
        assert status == 200
        meta = json.loads(body)
        assert meta["uuid"] == spec_a.instance_id
        assert meta["hostname"] == "vm-a"
        assert meta["public_keys"] == {"k1": KEY}
        assert _get(ga.netns, "/openstack/latest/user_data") == (200, user_data)
        assert _get(ga.netns, "/latest/user-data") == (200, user_data)
        assert _get(ga.netns, "/openstack") == (200, b"2012-08-10\n2015-10-15\nlatest")
        net_data = json.loads(_get(ga.netns, "/openstack/latest/network_data.json")[1])
        assert net_data["networks"][0]["ip_address"] == "10.77.0.41"
        assert _get(ga.netns, "/latest/meta-data/instance-id") == (
            200,
            f"i-{spec_a.instance_id[:8]}".encode(),
        )
        assert _get(ga.netns, "/latest/meta-data/local-ipv4") == (200, b"10.77.0.41")
        assert _get(ga.netns, "/latest/meta-data/public-keys/0/openssh-key") == (200, KEY.encode())
        assert _get(ga.netns, "/latest/meta-data/ami-launch-index") == (200, b"0")
        assert _get(ga.netns, "/latest/meta-data/placement/availability-zone") == (200, b"az-1")
        status, listing = _get(ga.netns, "/latest/meta-data/")
        assert status == 200
        assert b"public-keys/" in listing.split(b"\n")

        # Each source gets its own instance's answers; no user data is a 404.
        status, body = _get(gb.netns, "/openstack/latest/meta_data.json")
        assert status == 200
        assert json.loads(body)["uuid"] == spec_b.instance_id
        assert _get(gb.netns, "/openstack/latest/user_data")[0] == 404
        assert _get(gb.netns, "/latest/user-data")[0] == 404

        # A port on the network that belongs to no instance here: nothing to answer.
        gs = _guest(lab, plane, stranger)
        plane.plug(port_from_proto(stranger))
        sh("ip", "addr", "add", "10.77.0.43/24", "dev", "eth0", netns=gs.netns)
        sh("ip", "route", "add", "169.254.169.254/32", "via", SERVER_IP, netns=gs.netns)
        assert _get(gs.netns, "/openstack/latest/meta_data.json")[0] == 404
        plane.unplug(stranger.port_id)

        # The instance leaves: its documents and its lease go; the network's DHCP stays.
        driver.destroy(spec_a.instance_id)
        docs = plane.metadata.documents_dir(net)
        assert sorted(p.name for p in docs.glob("*.json")) == ["10.77.0.42.json"]
        hosts = (plane.dhcp.folder(net) / "hosts").read_text()
        assert a.mac_address not in hosts
        assert b.mac_address in hosts

        driver.destroy(spec_b.instance_id)
        assert plane.dhcp.pid(net) is None
        assert plane.metadata.pid(net) is None
        assert not plane.dhcp.folder(net).exists()
    finally:
        driver.close()


def test_a_later_build_updates_the_networks_dhcp_and_a_restart_brings_back_a_lost_dnsmasq(
    lab: Lab, tmp_path: Path, driver_and_plane: tuple[LibvirtDriver, HostDataPlane]
) -> None:
    driver, plane = driver_and_plane
    net, vni = str(uuid.uuid4()), 3700 + int(lab.tag, 16) % 500
    a = _binding(net, vni, "10.77.0.51", 1)
    b = _binding(net, vni, "10.77.0.52", 2)
    elsewhere = _binding(net, vni, "10.77.0.59", 9)  # a port of another host
    spec_a, spec_b = make_spec(ports=[a]), make_spec(ports=[b])
    try:
        driver.create(spec_a, dhcp=[_dhcp_msg(net, vni, [a, elsewhere])])
        folder = plane.dhcp.folder(net)
        hosts = (folder / "hosts").read_text()
        # Only this host's ports get a reservation here: the others' hosts serve theirs.
        assert a.mac_address in hosts
        assert elsewhere.mac_address not in hosts
        first_pid = plane.dhcp.pid(net)

        # The newer build's service wins (new DNS server) and holds both local leases.
        driver.create(spec_b, dhcp=[_dhcp_msg(net, vni, [a, b, elsewhere], dns="10.77.0.53")])
        hosts = (folder / "hosts").read_text()
        assert a.mac_address in hosts
        assert b.mac_address in hosts
        assert "dns-server,10.77.0.53" in (folder / "opts").read_text()
        assert plane.dhcp.pid(net) == first_pid  # reloaded, not restarted

        # The host rebooted: taps, bridges, dnsmasq and the metadata server are gone.
        plane.reconcile([], [])
        assert plane.dhcp.pid(net) is None
        assert bridge_name(net) not in sh("ip", "-o", "link", netns=plane.config.netns)
        gb = _guest(lab, plane, b)  # the guest's end of its tap, as QEMU would open it
        driver.close()
        driver = _driver(tmp_path, plane)
        driver.open()
        driver.reconcile_network()
        assert plane.dhcp.pid(net) is not None
        assert plane.metadata.pid(net) is not None
        hosts = (folder / "hosts").read_text()
        assert a.mac_address in hosts
        assert b.mac_address in hosts
        assert "dns-server,10.77.0.53" in (folder / "opts").read_text()
        assert sorted(p.name for p in plane.metadata.documents_dir(net).glob("*.json")) == [
            "10.77.0.51.json",
            "10.77.0.52.json",
        ]
        assert "BOUND ip=10.77.0.52" in _udhcpc(gb.netns, tmp_path)
        status, body = _get(gb.netns, "/openstack/latest/meta_data.json")
        assert status == 200
        assert json.loads(body)["uuid"] == spec_b.instance_id

        # Only dnsmasq died (the agent was up): reconcile starts it again.
        pid = plane.dhcp.pid(net)
        assert pid is not None
        plane.dhcp.kill(pid)
        assert plane.dhcp.pid(net) is None
        driver.reconcile_network()
        assert plane.dhcp.pid(net) is not None
    finally:
        for spec in (spec_a, spec_b):
            driver.destroy(spec.instance_id)
        driver.close()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("server_outside", "dhcp_server_ip is outside the subnet"),
        ("other_network", "none of the ports is on"),
        ("other_vni", "vni differs"),
        ("twice", "Two DHCP services"),
        ("server_mac_of_a_port", "dhcp_mac_address is also the MAC of a lease"),
    ],
)
def test_a_bad_dhcp_service_fails_the_build_before_anything_changes(
    lab: Lab,
    tmp_path: Path,
    driver_and_plane: tuple[LibvirtDriver, HostDataPlane],
    change: str,
    message: str,
) -> None:
    driver, plane = driver_and_plane
    net, vni = str(uuid.uuid4()), 3300
    port = _binding(net, vni, "10.77.0.61", 1)
    service = _dhcp_msg(net, vni, [port])
    services = [service]
    if change == "server_outside":
        service.subnets[0].dhcp_server_ip = "10.99.0.2"
    elif change == "other_network":
        service.network_id = str(uuid.uuid4())
    elif change == "other_vni":
        service.vni = vni + 1
    elif change == "server_mac_of_a_port":
        service.dhcp_mac_address = port.mac_address
    else:
        services = [service, service]
    spec = make_spec(ports=[port])
    try:
        with pytest.raises(BuildFailed, match=message):
            driver.create(spec, dhcp=services)
        assert plane.state().ports == {}
        assert bridge_name(net) not in sh("ip", "-o", "link", netns=plane.config.netns)
        assert not (tmp_path / "instances" / spec.instance_id).exists()
        assert driver.list_instances() == {}
    finally:
        driver.close()
