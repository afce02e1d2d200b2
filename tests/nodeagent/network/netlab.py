"""A network lab in namespaces: "hosts" joined by a veth underlay, and "guests" (a port
namespace each) plugged into a host by a veth whose host end is the port's tap.

Every namespace and device made here is recorded and removed by `Lab.close()`, which the
fixture calls even when a test fails. Names are short and unique per lab.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nodeagent.network import DataPlaneConfig, HostDataPlane, Port, tap_name
from nodeagent.network.model import FixedIp, Rule
from tests.support.libvirtd import in_ci


def sh(*argv: str, netns: str = "", check: bool = True) -> str:
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(full)}: {proc.stderr.strip()}")
    return proc.stdout


def can_run_lab() -> bool:
    if os.geteuid() != 0:
        return False
    if not Path("/proc/sys/net/bridge").exists():
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
    return Path("/proc/sys/net/bridge").exists()


def require_lab() -> None:
    """Returns when namespaces, bridges and bridge netfilter can be used; otherwise skips
    the test, or fails it in CI (which runs as root on a machine that has them)."""
    if can_run_lab():
        return
    reason = "needs root and bridge netfilter (br_netfilter)"
    if in_ci():
        pytest.fail(f"{reason}: CI must run the data plane tests")
    pytest.skip(reason)


@dataclass
class Guest:
    netns: str
    port: Port

    @property
    def ip(self) -> str:
        return self.port.fixed_ips[0].ip

    def ping(self, ip: str, count: int = 2) -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, "busybox", "ping", "-c", str(count), "-W", "1", ip],
            capture_output=True,
            check=False,
            timeout=30,
        )
        return proc.returncode == 0


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    namespaces: list[str] = field(default_factory=list)
    planes: list[HostDataPlane] = field(default_factory=list)

    def netns(self, role: str) -> str:
        name = f"lt{self.tag}{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "link", "set", "lo", "up", netns=name)
        return name

    def hosts(self, count: int, state_root: Path) -> list[HostDataPlane]:
        """Two hosts whose underlay (192.0.2.0/24) is a veth pair."""
        assert count == 2
        names = [self.netns(f"h{n}") for n in range(count)]
        ips = [f"192.0.2.{n + 1}" for n in range(count)]
        a, b = f"ul{self.tag}a", f"ul{self.tag}b"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        for ns, dev, ip in ((names[0], a, ips[0]), (names[1], b, ips[1])):
            sh("ip", "link", "set", dev, "netns", ns)
            sh("ip", "link", "set", dev, "name", "ul0", netns=ns)
            sh("ip", "addr", "add", f"{ip}/24", "dev", "ul0", netns=ns)
            sh("ip", "link", "set", "ul0", "up", netns=ns)
        for n, ns in enumerate(names):
            cfg = DataPlaneConfig(
                local_ip=ips[n],
                underlay_device="ul0",
                peers=tuple(ip for ip in ips if ip != ips[n]),
                state_dir=state_root / ns,
                netns=ns,
            )
            self.planes.append(HostDataPlane(cfg))
        return self.planes[:count]

    def guest(self, plane: HostDataPlane, port: Port, *, configure_ip: bool = True) -> Guest:
        """A namespace standing in for a guest: its eth0 is the far end of the port's tap."""
        ns = self.netns(f"g{len(self.namespaces)}")
        tap, peer = tap_name(port.port_id), f"gp{self.tag}{len(self.namespaces)}"
        sh("ip", "link", "add", tap, "type", "veth", "peer", "name", peer, netns=plane.config.netns)
        sh("ip", "link", "set", peer, "netns", ns, netns=plane.config.netns)
        sh("ip", "link", "set", peer, "name", "eth0", netns=ns)
        sh("ip", "link", "set", "eth0", "address", port.mac, netns=ns)
        sh("ip", "link", "set", "eth0", "mtu", str(port.mtu), netns=ns)
        sh("ip", "link", "set", "eth0", "up", netns=ns)
        if configure_ip:
            f = port.fixed_ips[0]
            sh("ip", "addr", "add", f"{f.ip}/{f.prefixlen}", "dev", "eth0", netns=ns)
        return Guest(ns, port)

    def close(self) -> None:
        for plane in self.planes:
            try:
                plane.reconcile([])
            except Exception:  # cleanup goes on; the namespaces go below
                for network_id in plane.dhcp.namespaces():
                    plane.dhcp.remove(network_id)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "pids", ns, check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                subprocess.run(["kill", "-9", pid], check=False)
            sh("ip", "netns", "del", ns, check=False)


def make_port(
    network_id: str,
    vni: int,
    ip: str,
    *,
    rules: tuple[Rule, ...] = (),
    n: int = 1,
    port_security: bool = True,
) -> Port:
    return Port(
        port_id=str(uuid.uuid4()),
        network_id=network_id,
        vni=vni,
        mac=f"fa:16:3e:00:{vni % 256:02x}:{n:02x}",
        fixed_ips=(FixedIp("subnet-0000-0001", ip, 24, "10.77.0.1"),),
        mtu=1450,
        rules=rules,
        port_security=port_security,
    )


ALLOW_ICMP_IN = Rule("ingress", "icmp")
ALLOW_ALL_OUT = Rule("egress")
