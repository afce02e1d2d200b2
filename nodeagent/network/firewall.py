"""Security groups as iptables chains (nf_tables backend) on the bridge path.

Bridged frames pass the `FORWARD` chain because `bridge-nf-call-iptables` is on; the
`physdev` match names the port's tap. Layout (docs/networking.md has the picture):

    FORWARD -> loom-fwd -> loom-egress  (per port: --physdev-in  tap -> loom-o-<p>)
                        -> loom-ingress (per port: --physdev-out tap -> loom-i-<p>)
                        -> loom-accept  (per port: --physdev-in  tap -> ACCEPT)

An egress chain RETURNs what the port may send and drops the rest; an ingress chain
ACCEPTs what the port may receive and drops the rest. Egress is checked first, so a frame
between two ports of one host passes the sender's egress and the receiver's ingress.
Both are stateful (conntrack ESTABLISHED,RELATED first), ingress denies by default, and
`loom-s-<p>` holds the port's (IP, MAC) pairs (fixed addresses and allowed address pairs):
anything else it sends is dropped.

IPv6 is not filtered by rule: every IPv6 frame to or from a port with port security is
dropped (ip6tables `loom-fwd`), so nothing passes unfiltered.

iptables never sees ARP, nor frames that are not IP. So each port with port security also
has an ebtables chain `loom-a-<p>` (bridge table, FORWARD, `-i tap`): ARP passes only with
the port's (IP, MAC) pairs (its fixed addresses with its MAC, each allowed address pair
with its MAC), other frames only from the port's MAC or an allowed pair's. Its policy is
DROP, so while it is being rewritten it fails closed.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from nodeagent.network.model import Port, Rule
from nodeagent.network.names import tap_name
from nodeagent.network.runner import Runner

FWD = "loom-fwd"
EGRESS = "loom-egress"
INGRESS = "loom-ingress"
ACCEPT = "loom-accept"
_PORT_CHAIN = re.compile(r"^-N loom-([ois])-(\S+)$")
_ARP_CHAIN = re.compile(r"^Bridge chain: loom-a-([^,]+),")


def _key(port_id: str) -> str:
    return port_id[:11]


def egress_chain(port_id: str) -> str:
    return f"loom-o-{_key(port_id)}"


def ingress_chain(port_id: str) -> str:
    return f"loom-i-{_key(port_id)}"


def spoof_chain(port_id: str) -> str:
    return f"loom-s-{_key(port_id)}"


def arp_chain(port_id: str) -> str:
    return f"loom-a-{_key(port_id)}"


def arp_rules(port: Port) -> list[list[str]]:
    """The ebtables rules of a port's `loom-a-` chain, in order: ARP only for the port's
    (address, MAC) pairs, anything else only from the MACs it may use."""
    pairs = [(f.ip, port.mac) for f in port.fixed_ips]
    pairs += [(p.net, p.mac) for p in port.allowed_pairs]
    pairs.append(("0.0.0.0", port.mac))  # address conflict probes before the guest has one
    rules = [
        ["-p", "ARP", "-s", mac, "--arp-ip-src", ip, "--arp-mac-src", mac, "-j", "RETURN"]
        for ip, mac in pairs
    ]
    rules.append(["-p", "ARP", "-j", "DROP"])
    rules += [["-s", mac, "-j", "RETURN"] for mac in port.source_macs()]
    rules.append(["-j", "DROP"])
    return rules


def _match(rule: Rule) -> list[str]:
    args: list[str] = []
    if rule.protocol:
        args += ["-p", rule.protocol]
        if rule.protocol in ("tcp", "udp") and (rule.port_min, rule.port_max) != (0, 0):
            span = (
                str(rule.port_min)
                if rule.port_min == rule.port_max
                else f"{rule.port_min}:{rule.port_max}"
            )
            args += ["-m", rule.protocol, "--dport", span]
        elif rule.protocol == "icmp" and (rule.port_min, rule.port_max) != (0, 0):
            icmp = str(rule.port_min) + (f"/{rule.port_max}" if rule.port_max else "")
            args += ["-m", "icmp", "--icmp-type", icmp]
    return args


def rule_lines(chain: str, rule: Rule, verdict: str) -> list[str]:
    """iptables-restore lines for one rule; a remote group gives one line per member."""
    flag = "-s" if rule.direction == "ingress" else "-d"
    match = " ".join(_match(rule))
    tail = f"{match} -j {verdict}".strip()
    if rule.remote_ips is not None:
        return [f"-A {chain} {flag} {ip}/32 {tail}" for ip in rule.remote_ips]
    if rule.remote_prefix:
        return [f"-A {chain} {flag} {rule.remote_prefix} {tail}"]
    return [f"-A {chain} {tail}"]


def port_chains(port: Port) -> list[str]:
    """The filter-table restore lines (declarations and rules) of one port's chains."""
    o, i, s = egress_chain(port.port_id), ingress_chain(port.port_id), spoof_chain(port.port_id)
    lines = [f":{o} - [0:0]", f":{i} - [0:0]", f":{s} - [0:0]"]
    if not port.port_security:
        return [*lines, f"-A {o} -j RETURN", f"-A {i} -j ACCEPT", f"-A {s} -j RETURN"]
    for fixed in port.fixed_ips:
        lines.append(f"-A {s} -s {fixed.ip}/32 -m mac --mac-source {port.mac} -j RETURN")
    for pair in port.allowed_pairs:
        lines.append(f"-A {s} -s {pair.net} -m mac --mac-source {pair.mac} -j RETURN")
    lines.append(f"-A {s} -j DROP")
    # Egress: a DHCP discover comes from 0.0.0.0, before the port has its address.
    lines += [
        f"-A {o} -s 0.0.0.0/32 -d 255.255.255.255/32 -p udp -m udp --sport 68 --dport 67 -j RETURN",
        f"-A {o} -j {s}",
        f"-A {o} -p udp -m udp --sport 68 --dport 67 -j RETURN",
        f"-A {o} -p udp -m udp --sport 67 --dport 68 -j DROP",
        f"-A {o} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-A {o} -m conntrack --ctstate INVALID -j DROP",
    ]
    for rule in port.rules:
        if rule.direction == "egress":
            lines += rule_lines(o, rule, "RETURN")
    lines.append(f"-A {o} -j DROP")
    lines += [
        f"-A {i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {i} -m conntrack --ctstate INVALID -j DROP",
        f"-A {i} -p udp -m udp --sport 67 --dport 68 -j ACCEPT",
    ]
    for rule in port.rules:
        if rule.direction == "ingress":
            lines += rule_lines(i, rule, "ACCEPT")
    lines.append(f"-A {i} -j DROP")
    return lines


class SecurityGroupFirewall:
    """Per-port chains and their dispatch. Every method is idempotent."""

    def __init__(self, runner: Runner) -> None:
        self._r = runner

    def _restore(self, lines: list[str], *, v6: bool = False) -> None:
        cmd = "ip6tables-restore" if v6 else "iptables-restore"
        body = "\n".join(["*filter", *lines, "COMMIT", ""])
        self._r.run([cmd, "--noflush", "-w"], stdin=body)

    def _ensure_chain(self, chain: str, *, v6: bool = False) -> None:
        tool = "ip6tables" if v6 else "iptables"
        if not self._r.ok([tool, "-w", "-n", "-L", chain]):
            self._r.run([tool, "-w", "-N", chain])

    def _ensure_rule(
        self, chain: str, spec: list[str], *, v6: bool = False, first: bool = False
    ) -> None:
        tool = "ip6tables" if v6 else "iptables"
        if not self._r.ok([tool, "-w", "-C", chain, *spec]):
            where = ["-I", chain, "1"] if first else ["-A", chain]
            self._r.run([tool, "-w", *where, *spec])

    def _delete_rule(self, chain: str, spec: list[str], *, v6: bool = False) -> None:
        tool = "ip6tables" if v6 else "iptables"
        while self._r.ok([tool, "-w", "-D", chain, *spec]):
            pass

    def setup(self) -> None:
        """Turns on netfilter for bridged frames and makes the dispatch chains."""
        if not Path("/proc/sys/net/bridge").exists():
            # The sysctls below exist only once br_netfilter is loaded (kernel-wide).
            subprocess.run(["modprobe", "br_netfilter"], capture_output=True, check=False)
        for name in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables"):
            self._r.run(["sysctl", "-q", "-w", f"net.bridge.{name}=1"])
        for chain in (FWD, EGRESS, INGRESS, ACCEPT):
            self._ensure_chain(chain)
        for chain in (EGRESS, INGRESS, ACCEPT):
            self._ensure_rule(FWD, ["-j", chain])
        self._ensure_rule("FORWARD", ["-j", FWD], first=True)
        self._ensure_chain(FWD, v6=True)
        self._ensure_rule("FORWARD", ["-j", FWD], v6=True, first=True)

    @staticmethod
    def _dispatch(port_id: str) -> list[tuple[str, list[str]]]:
        tap = tap_name(port_id)
        phys_in = ["-m", "physdev", "--physdev-in", tap, "--physdev-is-bridged"]
        phys_out = ["-m", "physdev", "--physdev-out", tap, "--physdev-is-bridged"]
        return [
            (EGRESS, [*phys_in, "-j", egress_chain(port_id)]),
            (INGRESS, [*phys_out, "-j", ingress_chain(port_id)]),
            (ACCEPT, [*phys_in, "-j", "ACCEPT"]),
        ]

    @staticmethod
    def _dispatch_v6(port_id: str) -> list[list[str]]:
        tap = tap_name(port_id)
        return [
            ["-m", "physdev", "--physdev-in", tap, "--physdev-is-bridged", "-j", "DROP"],
            ["-m", "physdev", "--physdev-out", tap, "--physdev-is-bridged", "-j", "DROP"],
        ]

    def _apply_arp(self, port: Port) -> None:
        chain, tap = arp_chain(port.port_id), tap_name(port.port_id)
        jump = ["-i", tap, "-j", chain]
        if not port.port_security:
            self._remove_arp(port.port_id)
            return
        if not self._r.ok(["ebtables", "-L", chain]):
            self._r.run(["ebtables", "-N", chain, "-P", "DROP"])
        self._r.run(["ebtables", "-P", chain, "DROP"])
        self._r.run(["ebtables", "-F", chain])
        for rule in arp_rules(port):
            self._r.run(["ebtables", "-A", chain, *rule])
        if not self._r.ok(["ebtables", "-C", "FORWARD", *jump]):
            self._r.run(["ebtables", "-A", "FORWARD", *jump])

    def _remove_arp(self, port_key: str) -> None:
        chain, tap = arp_chain(port_key), tap_name(port_key)
        while self._r.ok(["ebtables", "-D", "FORWARD", "-i", tap, "-j", chain]):
            pass
        if self._r.ok(["ebtables", "-L", chain]):
            self._r.run(["ebtables", "-F", chain])
            self._r.run(["ebtables", "-X", chain])

    def apply(self, port: Port) -> None:
        """Postcondition: the port's chains hold exactly its current rules (rewritten in
        one iptables-restore, so no half-applied set is ever visible) and are dispatched."""
        self.setup()
        self._apply_arp(port)
        self._restore(port_chains(port))
        for chain, spec in self._dispatch(port.port_id):
            self._ensure_rule(chain, spec)
        for spec in self._dispatch_v6(port.port_id):
            if port.port_security:
                self._ensure_rule(FWD, spec, v6=True)
            else:
                self._delete_rule(FWD, spec, v6=True)

    def remove(self, port_key: str) -> None:
        """Removes a port's dispatch and chains (by port id or its 11-character key).
        Succeeds if already absent."""
        self._remove_arp(port_key)
        for chain, spec in self._dispatch(port_key):
            self._delete_rule(chain, spec)
        for spec in self._dispatch_v6(port_key):
            self._delete_rule(FWD, spec, v6=True)
        for chain in (egress_chain(port_key), ingress_chain(port_key), spoof_chain(port_key)):
            if self._r.ok(["iptables", "-w", "-n", "-L", chain]):
                self._r.run(["iptables", "-w", "-F", chain])
        for chain in (egress_chain(port_key), ingress_chain(port_key), spoof_chain(port_key)):
            if self._r.ok(["iptables", "-w", "-n", "-L", chain]):
                self._r.run(["iptables", "-w", "-X", chain])

    def remove_dispatch_if_unused(self) -> None:
        """With no port chains left, removes the dispatch chains and FORWARD's jump too,
        so a host without ports holds no Loom rule at all."""
        if self.port_keys():
            return
        for v6 in (False, True):
            tool = "ip6tables" if v6 else "iptables"
            self._delete_rule("FORWARD", ["-j", FWD], v6=v6)
            chains = (FWD,) if v6 else (FWD, EGRESS, INGRESS, ACCEPT)
            for chain in chains:
                if self._r.ok([tool, "-w", "-n", "-L", chain]):
                    self._r.run([tool, "-w", "-F", chain])
            for chain in chains:
                if self._r.ok([tool, "-w", "-n", "-L", chain]):
                    self._r.run([tool, "-w", "-X", chain])

    def port_keys(self) -> set[str]:
        """The 11-character keys of every port that has chains on this host."""
        keys = set()
        for line in self._r.run(["iptables", "-w", "-S"]).splitlines():
            m = _PORT_CHAIN.match(line.strip())
            if m:
                keys.add(m.group(2))
        return keys | set(self.arp_chain_keys())

    def arp_chain_keys(self) -> list[str]:
        """The keys of the ports that have an ebtables chain on this host."""
        out = self._r.run(["ebtables", "-L"])
        return sorted(m.group(1) for m in map(_ARP_CHAIN.match, out.splitlines()) if m)

    def chains(self) -> list[str]:
        """Every Loom chain on this host, iptables and ebtables (tests list them before
        and after)."""
        ipv4 = [
            line.split()[1]
            for line in self._r.run(["iptables", "-w", "-S"]).splitlines()
            if line.startswith("-N loom-")
        ]
        return sorted(ipv4 + [f"loom-a-{key}" for key in self.arp_chain_keys()])
