"""dnsmasq in qdhcp-<network>: static leases from the IPAM addresses, stopped with the
network's last port."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import replace
from pathlib import Path

from nodeagent.network import DhcpLease, DhcpSubnet, NetworkDhcp, dhcp_namespace
from tests.nodeagent.network.netlab import ALLOW_ALL_OUT, Lab, make_port, sh


def _udhcpc(netns: str, script: Path) -> str:
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
            "mtu",
            "-s",
            str(script),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return proc.stdout + proc.stderr


def _script(tmp_path: Path) -> Path:
    script = tmp_path / "udhcpc.sh"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = bound ] && '
        'echo "BOUND ip=$ip mask=$mask router=$router dns=$dns mtu=$mtu host=$hostname"\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return script


def _dhcp(net: str, vni: int, leases: tuple[DhcpLease, ...]) -> NetworkDhcp:
    subnet = DhcpSubnet(
        "subnet-0000-0001", "10.77.0.0/24", "10.77.0.2", "10.77.0.1", ("10.77.0.1",)
    )
    return NetworkDhcp(net, vni, (subnet,), leases, 1450, "fa:16:3e:dd:00:02")


def _dnsmasq_pids() -> set[str]:
    """Live dnsmasq processes (zombies wait for init to reap them, and hold nothing)."""
    out = subprocess.run(
        ["ps", "-C", "dnsmasq", "-o", "pid=,stat="], capture_output=True, text=True, check=False
    )
    return {
        line.split()[0] for line in out.stdout.splitlines() if not line.split()[1].startswith("Z")
    }


def test_dnsmasq_hands_a_guest_its_ipam_address_and_stops_with_the_last_port(
    lab: Lab, tmp_path: Path
) -> None:
    h1, _ = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 5000 + int(lab.tag, 16) % 1000
    port = make_port(net, vni, "10.77.0.23", rules=(ALLOW_ALL_OUT,), n=3)
    dnsmasq_before = _dnsmasq_pids()
    dhcp = _dhcp(net, vni, (DhcpLease(port.mac, "10.77.0.23", "vm-one"),))
    guest = lab.guest(h1, port, configure_ip=False)
    h1.plug(port, dhcp)
    pid = h1.dhcp.pid(net)
    assert pid is not None

    out = _udhcpc(guest.netns, _script(tmp_path))
    assert "BOUND ip=10.77.0.23 mask=24 router=10.77.0.1 dns=10.77.0.1 mtu=1450" in out, out

    # Plugging again with the same input changes nothing; a new reservation reloads the
    # same process.
    h1.plug(port, dhcp)
    assert h1.dhcp.pid(net) == pid
    h1.plug(port, replace(dhcp, leases=(DhcpLease(port.mac, "10.77.0.24", "vm-one"),)))
    assert h1.dhcp.pid(net) == pid
    out = _udhcpc(guest.netns, _script(tmp_path))
    assert "BOUND ip=10.77.0.24" in out, out

    h1.unplug(port.port_id)
    assert h1.dhcp.pid(net) is None
    assert not Path(f"/var/run/netns/{dhcp_namespace(net, h1.config.netns)}").exists()
    assert _dnsmasq_pids() <= dnsmasq_before
    assert "brq" not in sh("ip", "-o", "link", netns=h1.config.netns)
