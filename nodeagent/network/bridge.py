"""Per-network Linux bridge with its VXLAN device, and the taps of ports on it.

Flooding: each VXLAN device is made with `nolearning` off (the kernel learns remote MACs
from what arrives) and one all-zero FDB entry per peer VTEP, so broadcast, unknown
unicast and multicast go by head-end replication to every known peer (unicast underlay:
no multicast routing needed, and a namespace "underlay" of a veth works the same).
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.network.names import alias, bridge_name, tap_name, vxlan_name
from nodeagent.network.runner import Runner

VXLAN_PORT = 4789
_ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class VxlanConfig:
    """The host's side of the overlay: its VTEP address, the device it leaves by, and the
    VTEPs of the other hosts (every VNI floods to all of them)."""

    local_ip: str
    underlay_device: str = ""
    peers: tuple[str, ...] = ()


class NetworkBridge:
    """`brq<net[:11]>` with `vxlan-<vni>` enslaved. Idempotent both ways."""

    def __init__(self, runner: Runner, vxlan: VxlanConfig) -> None:
        self._r = runner
        self._vxlan = vxlan

    def ensure(self, network_id: str, vni: int, mtu: int) -> str:
        """Postcondition: the bridge and its VXLAN device exist, are up, carry `mtu`, and
        flood to every configured peer. Returns the bridge name."""
        br, vx = bridge_name(network_id), vxlan_name(vni)
        r = self._r
        if not r.link_exists(br):
            r.run(["ip", "link", "add", br, "type", "bridge"])
        # No STP on a bridge of tap ports and one overlay link: no loops to break, and
        # forwarding starts at once.
        r.run(["ip", "link", "set", "dev", br, "type", "bridge", "stp_state", "0"])
        r.run(["ip", "link", "set", "dev", br, "alias", alias("network", network_id)])
        if not r.link_exists(vx):
            argv = ["ip", "link", "add", vx, "type", "vxlan", "id", str(vni)]
            argv += ["local", self._vxlan.local_ip, "dstport", str(VXLAN_PORT)]
            if self._vxlan.underlay_device:
                argv += ["dev", self._vxlan.underlay_device]
            r.run(argv)
        r.run(["ip", "link", "set", "dev", vx, "alias", alias("vxlan", network_id)])
        r.run(["ip", "link", "set", "dev", vx, "mtu", str(mtu)])
        r.run(["ip", "link", "set", "dev", vx, "master", br])
        # Isolated bridge ports never forward to each other; only the DHCP veth is the
        # other isolated port, so this host's DHCP and metadata server never answers, nor
        # hears, another host's guests (distributed DHCP). Taps are not isolated: guests
        # reach the VXLAN and the DHCP veth as before.
        r.run(["bridge", "link", "set", "dev", vx, "isolated", "on"])
        r.run(["ip", "link", "set", "dev", vx, "up"])
        r.run(["ip", "link", "set", "dev", br, "mtu", str(mtu)])
        r.run(["ip", "link", "set", "dev", br, "up"])
        self._ensure_flood(vx)
        return br

    def _ensure_flood(self, vx: str) -> None:
        present = set()
        for line in self._r.run(["bridge", "fdb", "show", "dev", vx]).splitlines():
            parts = line.split()
            if parts and parts[0] == _ZERO_MAC and "dst" in parts:
                present.add(parts[parts.index("dst") + 1])
        wanted = set(self._vxlan.peers)
        for peer in sorted(wanted - present):
            self._r.run(["bridge", "fdb", "append", _ZERO_MAC, "dev", vx, "dst", peer])
        for peer in sorted(present - wanted):
            self._r.run(["bridge", "fdb", "del", _ZERO_MAC, "dev", vx, "dst", peer], check=False)

    def remove(self, network_id: str, vni: int | None) -> None:
        """Removes the bridge and its VXLAN device. Succeeds if already absent."""
        for dev in ([vxlan_name(vni)] if vni else []) + [bridge_name(network_id)]:
            if self._r.link_exists(dev):
                self._r.run(["ip", "link", "del", "dev", dev])


class PortTap:
    """The tap of a port, enslaved to its network's bridge.

    A tap that already exists is adopted (libvirt opens it when the domain starts, with
    `managed='no'`); one that does not is made as a persistent tap, so it outlives guest
    restarts and is Loom's to remove.
    """

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    def ensure(self, port_id: str, network_id: str, mtu: int) -> str:
        tap, r = tap_name(port_id), self._r
        if not r.link_exists(tap):
            r.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        r.run(["ip", "link", "set", "dev", tap, "alias", alias("port", port_id)])
        r.run(["ip", "link", "set", "dev", tap, "mtu", str(mtu)])
        r.run(["ip", "link", "set", "dev", tap, "master", bridge_name(network_id)])
        r.run(["ip", "link", "set", "dev", tap, "up"])
        return tap

    def remove(self, port_id: str) -> None:
        """Deletes the tap. Succeeds if already absent."""
        tap = tap_name(port_id)
        if self._r.link_exists(tap):
            self._r.run(["ip", "link", "del", "dev", tap])
