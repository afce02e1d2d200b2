"""Routers on the L3 host, one namespace each (`qrouter-<router id>`), legacy L3 agent style.

One host serves every router (centralised: no DVR, no HA). A router's namespace joins
each of its networks by a veth: the bridge end (`qrb<port[:11]>`, `qgb<port[:11]>` for
the gateway leg) is on the network's bridge, not isolated (the router reaches guests on
other hosts across the VXLAN), and carries the alias `loom:router:<router id>`; the
namespace end (`qr-<port[:11]>`, `qg-<port[:11]>`) holds the leg's MAC, MTU and
addresses. The gateway leg also holds every floating IP as a /32 and the default route
via its subnet's gateway, which is this host: that address sits on the external
network's bridge itself, so the host reaches floating IPs and the router's traffic out
ends at the host.

    brq<tenant> ── qrb<p> ═ veth ═ qr-<p> ─┐  qrouter-<router id>: ip_forward=1,
    brq<tenant> ── qrb<p> ═ veth ═ qr-<p> ─┤  nat: DNAT/SNAT per floating IP,
                                           │  SNAT of the interface subnets
    brq<external> ── qgb<p> ═ veth ═ qg-<p> ┘  (gateway address, floating IPs /32,
    (next hop's address on the bridge)         default route via the next hop)

Nothing is kept in memory: routers are found again from their namespaces and the aliases
of the bridge ends (which say, through their bridge's alias, which networks they use).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from nodeagent.network.model import InvalidNetworkInput, Router, RouterLeg
from nodeagent.network.names import (
    alias,
    bridge_name,
    parse_alias,
    router_bridge_end,
    router_gateway_bridge_end,
    router_gateway_name,
    router_interface_name,
    router_namespace,
)
from nodeagent.network.runner import Runner

log = logging.getLogger(__name__)

NETNS_DIR = Path("/var/run/netns")
_NAT_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def nat_rules(router: Router) -> list[str]:
    """The router's whole nat table, as `iptables -t nat -S` prints it (chain by chain,
    in that order): per floating IP a DNAT in PREROUTING and OUTPUT and an SNAT in
    POSTROUTING; then, with `enable_snat`, an SNAT of each interface subnet to the
    gateway address. The floating IPs' SNAT comes first, so a port with a floating IP
    leaves as its floating IP. Empty without a gateway leg."""
    if router.gateway is None:
        return []
    qg = router_gateway_name(router.gateway.port_id)
    pre, out, post = [], [], []
    for fip in router.floating_ips:
        pre.append(f"-A PREROUTING -d {fip.floating_ip}/32 -j DNAT --to-destination {fip.fixed_ip}")
        out.append(f"-A OUTPUT -d {fip.floating_ip}/32 -j DNAT --to-destination {fip.fixed_ip}")
        post.append(
            f"-A POSTROUTING -s {fip.fixed_ip}/32 -o {qg} -j SNAT --to-source {fip.floating_ip}"
        )
    if router.enable_snat:
        source = router.gateway.fixed_ips[0].ip
        subnets: list[str] = []
        for leg in router.interfaces:
            for fixed in leg.fixed_ips:
                subnet = str(fixed.interface.network)
                if subnet not in subnets:
                    subnets.append(subnet)
        for subnet in subnets:
            post.append(f"-A POSTROUTING -s {subnet} -o {qg} -j SNAT --to-source {source}")
    return pre + out + post


def _addresses(runner: Runner, dev: str) -> set[str]:
    """The IPv4 addresses (`ip/prefixlen`) on `dev`."""
    have = set()
    for line in runner.run(["ip", "-4", "-o", "addr", "show", "dev", dev]).splitlines():
        parts = line.split()
        have.add(parts[parts.index("inet") + 1])
    return have


class RouterNamespaces:
    """The routers of this host, one namespace each. `ensure` and `remove` are idempotent;
    `ensure` needs the bridges of the router's networks (HostDataPlane makes them)."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    def namespace(self, router_id: str) -> str:
        """The router's namespace on this host."""
        return router_namespace(router_id, self._r.netns)

    def _prefix(self) -> str:
        return router_namespace("", self._r.netns)

    def namespaced(self) -> set[str]:
        """Ids of the routers that have a namespace on this host."""
        if not NETNS_DIR.is_dir():
            return set()
        prefix = self._prefix()
        return {
            p.name.removeprefix(prefix)
            for p in NETNS_DIR.iterdir()
            if p.name.startswith(prefix) and len(p.name) > len(prefix)
        }

    def present(self, links: list[dict[str, Any]] | None = None) -> dict[str, set[str]]:
        """router id -> ids of the networks its legs are on, for every router this host
        has (a namespace, or a bridge end aliased `loom:router:<id>`). `links`: the host's
        `Runner.links()` when the caller has it already."""
        found: dict[str, set[str]] = {rid: set() for rid in self.namespaced()}
        links = self._r.links() if links is None else links
        aliases = {str(link.get("ifname", "")): str(link.get("ifalias", "")) for link in links}
        for link in links:
            parsed = parse_alias(str(link.get("ifalias", "")))
            if parsed is None or parsed[0] != "router":
                continue
            nets = found.setdefault(parsed[1], set())
            net = parse_alias(aliases.get(str(link.get("master", "")), ""))
            if net is not None and net[0] == "network":
                nets.add(net[1])
        return found

    def ensure(self, router: Router) -> str:
        """Postcondition: the router's namespace forwards IPv4, holds exactly the router's
        legs (each on its network's bridge, with its MAC, MTU and addresses; floating IPs
        as /32s on the gateway leg), a default route via the gateway leg's next hop, and
        exactly `nat_rules(router)` in its nat table; the next hop's address is on the
        external bridge. Legs, addresses and NAT lines no longer wanted are removed.
        Idempotent: state is read first and only differences are written. Returns the
        namespace."""
        self.refuse_a_taken_external_subnet(router)
        ns = self.namespace(router.router_id)
        if not (NETNS_DIR / ns).exists():
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        inside = Runner(ns)
        _set_link(inside, "lo", up=True)
        if inside.run(["sysctl", "-n", "net.ipv4.ip_forward"]).strip() != "1":
            inside.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        wanted: dict[str, str] = {}  # namespace end -> bridge end
        for leg in router.interfaces:
            wanted[router_interface_name(leg.port_id)] = router_bridge_end(leg.port_id)
        if router.gateway is not None:
            gw = router.gateway.port_id
            wanted[router_gateway_name(gw)] = router_gateway_bridge_end(gw)
        # Stale legs go first: a new leg may take over an old one's address.
        self._remove_stale_legs(router.router_id, inside, wanted)
        for leg in router.interfaces:
            addrs = {f.interface.with_prefixlen for f in leg.fixed_ips}
            self._ensure_leg(router.router_id, leg, ns, gateway=False, addresses=addrs)
        if router.gateway is not None:
            leg = router.gateway
            addrs = {f.interface.with_prefixlen for f in leg.fixed_ips}
            addrs |= {f"{fip.floating_ip}/32" for fip in router.floating_ips}
            self._ensure_leg(router.router_id, leg, ns, gateway=True, addresses=addrs)
            self._ensure_next_hop_on_bridge(leg)
        self._ensure_default_route(inside, router.gateway)
        self._ensure_nat(inside, nat_rules(router))
        return ns

    def _remove_stale_legs(self, router_id: str, inside: Runner, wanted: dict[str, str]) -> None:
        for link in inside.links():
            name = str(link.get("ifname", ""))
            if name.startswith(("qr-", "qg-")) and name not in wanted:
                inside.run(["ip", "link", "del", "dev", name])  # takes its bridge end along
        mine = alias("router", router_id)
        for link in self._r.links():
            name = str(link.get("ifname", ""))
            if link.get("ifalias") == mine and name not in wanted.values():
                self._r.run(["ip", "link", "del", "dev", name], check=False)

    def _ensure_leg(
        self, router_id: str, leg: RouterLeg, ns: str, *, gateway: bool, addresses: set[str]
    ) -> None:
        r, inside = self._r, Runner(ns)
        if gateway:
            inner, outer = router_gateway_name(leg.port_id), router_gateway_bridge_end(leg.port_id)
        else:
            inner, outer = router_interface_name(leg.port_id), router_bridge_end(leg.port_id)
        if not inside.link_exists(inner):
            # A half-made leg (a crash between the steps below) is made again whole.
            for left in (outer, inner):
                if r.link_exists(left):
                    r.run(["ip", "link", "del", "dev", left])
            r.run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            r.run(["ip", "link", "set", "dev", inner, "netns", ns])
        mine = alias("router", router_id)
        _set_link(r, outer, alias=mine, mtu=leg.mtu, master=bridge_name(leg.network_id), up=True)
        _set_link(inside, inner, address=leg.mac, mtu=leg.mtu, up=True)
        have = _addresses(inside, inner)
        for addr in sorted(have - addresses):
            inside.run(["ip", "addr", "del", addr, "dev", inner])
        for addr in sorted(addresses - have):
            inside.run(["ip", "addr", "add", addr, "dev", inner])

    def refuse_a_taken_external_subnet(self, router: Router) -> None:
        """Raises InvalidNetworkInput when the host is already on the router's external
        subnet through another device (its own uplink, say): holding the next hop on the
        external bridge too would take the subnet's route, or the host's own gateway
        address, from that device."""
        leg = router.gateway
        if leg is None:
            return
        first = leg.fixed_ips[0]
        subnet = first.interface.network
        br = bridge_name(leg.network_id)
        listed = json.loads(self._r.run(["ip", "-j", "-4", "addr", "show"]) or "[]")
        for link in listed:
            dev = str(link.get("ifname", ""))
            if dev == br:
                continue
            for info in link.get("addr_info", []):
                held = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}")
                if held.network.overlaps(subnet):
                    raise InvalidNetworkInput(
                        f"the external subnet {subnet} overlaps {held} on {dev} of this host:"
                        " the L3 host cannot be that subnet's gateway"
                    )

    def _ensure_next_hop_on_bridge(self, leg: RouterLeg) -> None:
        """The L3 host is the external network's gateway: the next hop's address is on the
        external bridge. It goes with the bridge."""
        first = leg.fixed_ips[0]
        addr = f"{first.gateway}/{first.prefixlen}"
        br = bridge_name(leg.network_id)
        if addr not in _addresses(self._r, br):
            self._r.run(["ip", "addr", "add", addr, "dev", br])

    @staticmethod
    def _ensure_default_route(inside: Runner, gateway: RouterLeg | None) -> None:
        routes = json.loads(inside.run(["ip", "-j", "-4", "route", "show", "default"]) or "[]")
        have = [(str(r.get("gateway", "")), str(r.get("dev", ""))) for r in routes]
        if gateway is None:
            for _ in have:
                inside.run(["ip", "-4", "route", "del", "default"])
            return
        want = (gateway.fixed_ips[0].gateway, router_gateway_name(gateway.port_id))
        if have != [want]:
            for _ in have:
                inside.run(["ip", "-4", "route", "del", "default"])
            inside.run(["ip", "-4", "route", "add", "default", "via", want[0], "dev", want[1]])

    @staticmethod
    def _ensure_nat(inside: Runner, rules: list[str]) -> None:
        have = [
            line
            for line in inside.run(["iptables", "-w", "-t", "nat", "-S"]).splitlines()
            if not line.startswith("-P ")
        ]
        if have == rules:
            return
        # One restore is one transaction: the table is never seen half-written. --noflush
        # leaves the other tables alone; the -F lines empty the nat chains in it.
        body = ["*nat"]
        body += [f":{chain} ACCEPT [0:0]" for chain in _NAT_CHAINS]
        body += [f"-F {chain}" for chain in _NAT_CHAINS]
        body += [*rules, "COMMIT", ""]
        inside.run(["iptables-restore", "-n", "-w"], stdin="\n".join(body))

    def remove(self, router_id: str) -> None:
        """Deletes the router's veths and namespace. Succeeds if already absent. The next
        hop's address stays on the external bridge (it goes with the bridge)."""
        mine = alias("router", router_id)
        for link in self._r.links():
            # Deleted here, not left to the namespace's (asynchronous) teardown, so the
            # bridge ends are gone when this returns.
            if link.get("ifalias") == mine:
                self._r.run(["ip", "link", "del", "dev", str(link["ifname"])], check=False)
        ns = self.namespace(router_id)
        if (NETNS_DIR / ns).exists():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        log.info("router removed from host", extra={"router_id": router_id})


def _set_link(
    runner: Runner,
    dev: str,
    *,
    alias: str | None = None,
    mtu: int | None = None,
    master: str | None = None,
    address: str | None = None,
    up: bool = False,
) -> None:
    """Sets what differs from `ip -j link show dev` (nothing when all matches)."""
    shown = json.loads(runner.run(["ip", "-j", "link", "show", "dev", dev]) or "[{}]")[0]
    argv: list[str] = []
    if alias is not None and shown.get("ifalias") != alias:
        argv += ["alias", alias]
    if mtu is not None and shown.get("mtu") != mtu:
        argv += ["mtu", str(mtu)]
    if master is not None and shown.get("master") != master:
        argv += ["master", master]
    if address is not None and shown.get("address") != address:
        argv += ["address", address]
    if up and "UP" not in shown.get("flags", []):
        argv += ["up"]
    if argv:
        runner.run(["ip", "link", "set", "dev", dev, *argv])
