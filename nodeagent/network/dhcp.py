"""dnsmasq per network, in namespace `qdhcp-<network-id>`, static leases only.

The namespace joins the network's bridge by a veth (`dhb…` on the bridge, `dhn…` inside,
holding the DHCP server address of every subnet). dnsmasq reads its reservations from a
hosts file and its options from an options file; a change rewrites them and sends SIGHUP,
which makes dnsmasq read both again without dropping leases. The pid file tells whether
the process runs (and is this network's dnsmasq: its command line names the network).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from nodeagent.network.model import METADATA_IP, NetworkDhcp
from nodeagent.network.names import (
    alias,
    bridge_name,
    dhcp_bridge_end,
    dhcp_namespace,
    dhcp_ns_end,
)
from nodeagent.network.runner import Runner

log = logging.getLogger(__name__)

DNSMASQ = "/usr/sbin/dnsmasq"
LEASE_SECONDS = 86400


def hosts_file(dhcp: NetworkDhcp) -> str:
    """dnsmasq --dhcp-hostsfile lines: `mac,ip[,hostname]`, in a stable order."""
    lines = []
    for lease in sorted(dhcp.leases, key=lambda x: (x.mac, x.ip)):
        fields = [lease.mac, lease.ip] + ([lease.hostname] if lease.hostname else [])
        lines.append(",".join(fields))
    return "\n".join(lines) + ("\n" if lines else "")


def opts_file(dhcp: NetworkDhcp) -> str:
    """dnsmasq --dhcp-optsfile lines: router, DNS servers, MTU and classless static routes
    per subnet tag."""
    lines = []
    for n, subnet in enumerate(dhcp.subnets):
        tag = f"tag:s{n}"
        # An empty router option tells the client there is no default route.
        lines.append(f"{tag},option:router" + (f",{subnet.gateway}" if subnet.gateway else ""))
        # Option 121: the metadata address via this host's DHCP server (which holds it).
        # A client given option 121 ignores the router option (RFC 3442), so the default
        # route is repeated here.
        routes = f"{METADATA_IP}/32,{subnet.server_ip}"
        if subnet.gateway:
            routes += f",0.0.0.0/0,{subnet.gateway}"
        lines.append(f"{tag},option:classless-static-route,{routes}")
        if subnet.dns:
            lines.append(f"{tag},option:dns-server," + ",".join(subnet.dns))
        lines.append(f"{tag},option:mtu,{dhcp.mtu}")
    return "\n".join(lines) + "\n"


class DhcpService:
    """One dnsmasq per network. `ensure` starts or reloads it; `remove` ends it and
    everything it left. Both are idempotent."""

    def __init__(self, runner: Runner, state_dir: Path) -> None:
        self._r = runner
        self._dir = state_dir / "dhcp"

    def folder(self, network_id: str) -> Path:
        """The network's DHCP state folder (its metadata service's files live there too)."""
        return self._dir / network_id

    def namespace(self, network_id: str) -> str:
        """The network's DHCP namespace on this host."""
        return dhcp_namespace(network_id, self._r.netns)

    def _ns(self, network_id: str) -> Runner:
        return Runner(self.namespace(network_id))

    def namespaces(self) -> set[str]:
        """Network ids that have a DHCP state folder on this host."""
        if not self._dir.is_dir():
            return set()
        return {p.name for p in self._dir.iterdir() if p.is_dir()}

    def pid(self, network_id: str) -> int | None:
        """The running dnsmasq of the network, or None."""
        return self.running_pid(self.folder(network_id) / "pid", self.folder(network_id))

    @staticmethod
    def running_pid(pid_file: Path, marker: Path) -> int | None:
        """The pid in `pid_file` if that process runs and its command line names `marker`
        (a recycled pid names something else), else None. A zombie does not run."""
        try:
            pid = int(pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except (OSError, ValueError, IndexError):
            return None
        return pid if str(marker).encode() in cmdline and not zombie else None

    def _ensure_namespace(self, dhcp: NetworkDhcp) -> None:
        ns = self.namespace(dhcp.network_id)
        outer, inner = dhcp_bridge_end(dhcp.network_id), dhcp_ns_end(dhcp.network_id)
        if not Path(f"/var/run/netns/{ns}").exists():
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        inside = self._ns(dhcp.network_id)
        if not inside.link_exists(inner):
            if self._r.link_exists(outer):
                self._r.run(["ip", "link", "del", "dev", outer])
            self._r.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            self._r.run(["ip", "link", "set", "dev", inner, "netns", ns])
        self._r.run(["ip", "link", "set", "dev", outer, "alias", alias("dhcp", dhcp.network_id)])
        self._r.run(["ip", "link", "set", "dev", outer, "mtu", str(dhcp.mtu)])
        self._r.run(["ip", "link", "set", "dev", outer, "master", bridge_name(dhcp.network_id)])
        # Distributed DHCP: every host serves the network with the same address and MAC.
        # The VXLAN port is isolated too (bridge.py), and two isolated ports never forward
        # to each other: this server neither hears nor answers another host's guests.
        self._r.run(["bridge", "link", "set", "dev", outer, "isolated", "on"])
        self._r.run(["ip", "link", "set", "dev", outer, "up"])
        if dhcp.server_mac:
            inside.run(["ip", "link", "set", "dev", inner, "address", dhcp.server_mac])
        inside.run(["ip", "link", "set", "dev", inner, "mtu", str(dhcp.mtu)])
        inside.run(["ip", "link", "set", "dev", "lo", "up"])
        inside.run(["ip", "link", "set", "dev", inner, "up"])
        wanted = {f"{s.server_ip}/{ipaddress.IPv4Network(s.cidr).prefixlen}" for s in dhcp.subnets}
        # The metadata service's address lives here too (metadata.py): kept, never flapped.
        wanted.add(f"{METADATA_IP}/32")
        have = set()
        for line in inside.run(["ip", "-4", "-o", "addr", "show", "dev", inner]).splitlines():
            parts = line.split()
            have.add(parts[parts.index("inet") + 1])
        for addr in sorted(wanted - have):
            inside.run(["ip", "addr", "add", addr, "dev", inner])
        for addr in sorted(have - wanted):
            inside.run(["ip", "addr", "del", addr, "dev", inner])

    def _argv(self, dhcp: NetworkDhcp) -> list[str]:
        files = self.folder(dhcp.network_id)
        argv = [
            DNSMASQ,
            "--conf-file=/dev/null",
            "--no-hosts",
            "--no-resolv",
            "--port=0",  # DHCP only: no DNS service
            "--bind-interfaces",
            f"--interface={dhcp_ns_end(dhcp.network_id)}",
            "--except-interface=lo",
            f"--pid-file={files / 'pid'}",
            f"--dhcp-hostsfile={files / 'hosts'}",
            f"--dhcp-optsfile={files / 'opts'}",
            f"--dhcp-leasefile={files / 'leases'}",
            f"--log-facility={files / 'log'}",
            "--dhcp-authoritative",
            "--user=root",
            "--group=root",
        ]
        for n, subnet in enumerate(dhcp.subnets):
            net = ipaddress.IPv4Network(subnet.cidr)
            argv.append(
                f"--dhcp-range=set:s{n},{net.network_address},static,{net.netmask},{LEASE_SECONDS}s"
            )
        return argv

    def ensure(self, dhcp: NetworkDhcp) -> int:
        """Postcondition: the network's dnsmasq runs with these leases and options.
        Returns its pid. Needs the network's bridge."""
        files = self.folder(dhcp.network_id)
        files.mkdir(parents=True, exist_ok=True)
        self._ensure_namespace(dhcp)
        changed = False
        for name, text in (("hosts", hosts_file(dhcp)), ("opts", opts_file(dhcp))):
            path = files / name
            if not path.exists() or path.read_text() != text:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(path)
                changed = True
        argv = self._argv(dhcp)
        args_file = files / "argv"
        pid = self.pid(dhcp.network_id)
        if pid is not None and args_file.exists() and args_file.read_text() != "\n".join(argv):
            # New subnets or ranges: dnsmasq reads those only at start.
            self.kill(pid)
            pid = None
        if pid is not None:
            if changed:
                os.kill(pid, signal.SIGHUP)
            return pid
        args_file.write_text("\n".join(argv))
        self._ns(dhcp.network_id).run(argv)
        pid = self.pid(dhcp.network_id)
        if pid is None:
            raise RuntimeError(f"dnsmasq for network {dhcp.network_id} did not start")
        log.info("dhcp started", extra={"network_id": dhcp.network_id, "pid": pid})
        return pid

    @staticmethod
    def kill(pid: int) -> None:
        """SIGTERM, then SIGKILL after 5 s; returns once the process is gone or a zombie."""
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not Path(f"/proc/{pid}").exists():
                return
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(")")[-1].split()[0] == "Z":
                        return
            except OSError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

    def remove(self, network_id: str) -> None:
        """Stops dnsmasq and whatever else runs in the namespace (the metadata server),
        deletes the veth, the namespace and the state folder. Succeeds if already absent."""
        pid = self.pid(network_id)
        if pid is not None:
            self.kill(pid)
        outer = dhcp_bridge_end(network_id)
        if self._r.link_exists(outer):
            self._r.run(["ip", "link", "del", "dev", outer])
        ns = self.namespace(network_id)
        if Path(f"/var/run/netns/{ns}").exists():
            # A process left in a deleted namespace would keep it alive, unreachable.
            pids = subprocess.run(
                ["ip", "netns", "pids", ns], capture_output=True, text=True, check=False
            ).stdout.split()
            for left in pids:
                if left.isdigit():
                    self.kill(int(left))
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(self.folder(network_id), ignore_errors=True)
