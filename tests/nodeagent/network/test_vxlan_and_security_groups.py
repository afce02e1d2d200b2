"""Two hosts (namespaces joined by a veth underlay), one VXLAN network, a guest on each."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from nodeagent.network import bridge_name, vxlan_name
from nodeagent.network.model import Rule
from tests.nodeagent.network.netlab import ALLOW_ALL_OUT, ALLOW_ICMP_IN, Lab, make_port, sh


def _links(netns: str) -> set[str]:
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in sh("ip", "-o", "link", netns=netns).splitlines()
    }


def test_guests_on_two_hosts_ping_across_vxlan_only_while_a_rule_allows_it(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 4000 + int(lab.tag, 16) % 1000
    before = {
        ns: (_links(ns), h.firewall.chains())
        for ns, h in ((h1.config.netns, h1), (h2.config.netns, h2))
    }
    rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
    p1 = make_port(net, vni, "10.77.0.11", rules=rules, n=1)
    p2 = make_port(net, vni, "10.77.0.12", rules=rules, n=2)
    g1, g2 = lab.guest(h1, p1), lab.guest(h2, p2)
    h1.plug(p1)
    h2.plug(p2)
    assert {bridge_name(net), vxlan_name(vni)} <= _links(h1.config.netns)

    assert g1.ping(g2.ip, count=3)
    assert g2.ping(g1.ip)

    # Host 2 stops letting ICMP in to its guest: g1 -> g2 fails, g2 -> g1 (stateful) works.
    h2.plug(replace(p2, rules=(ALLOW_ALL_OUT,)))
    assert not g1.ping(g2.ip, count=2)
    assert g2.ping(g1.ip)

    h1.unplug(p1.port_id)
    h2.unplug(p2.port_id)
    for ns, h in ((h1.config.netns, h1), (h2.config.netns, h2)):
        links_before, chains_before = before[ns]
        # The guest's own veth end went with the tap; nothing else Loom made is left.
        assert _links(ns) == links_before
        assert h.firewall.chains() == chains_before == []


def test_reconcile_after_a_restart_removes_what_is_not_wanted_and_repairs_what_drifted(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net_a, net_b = str(uuid.uuid4()), str(uuid.uuid4())
    vni = 6000 + int(lab.tag, 16) % 1000
    rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
    keep = make_port(net_a, vni, "10.77.0.31", rules=rules, n=1)
    stale = make_port(net_b, vni + 1, "10.77.0.32", rules=rules, n=2)
    peer = make_port(net_a, vni, "10.77.0.33", rules=rules, n=3)
    g_keep, g_peer = lab.guest(h1, keep), lab.guest(h2, peer)
    h1.plug(keep)
    h1.plug(stale)
    h2.plug(peer)
    # Drift: someone flushed the kept port's ingress chain and took its tap off the bridge.
    sh("iptables", "-F", f"loom-i-{keep.port_id[:11]}", netns=h1.config.netns)
    sh("ip", "link", "set", f"tap{keep.port_id[:11]}", "nomaster", netns=h1.config.netns)

    restarted = type(h1)(h1.config)  # a new agent process: nothing in memory
    restarted.reconcile([keep])

    state = restarted.state()
    assert state.ports == {keep.port_id: net_a}
    assert set(state.networks) == {net_a}
    assert restarted.firewall.port_keys() == {keep.port_id[:11]}
    assert bridge_name(net_b) not in _links(h1.config.netns)
    assert g_peer.ping(g_keep.ip)


def test_a_guest_that_spoofs_its_address_is_cut_off_and_remote_groups_admit_only_members(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 7000 + int(lab.tag, 16) % 1000
    member, outsider = "10.77.0.41", "10.77.0.42"
    from_members = Rule("ingress", "icmp", remote_ips=(member,))
    target = make_port(net, vni, "10.77.0.40", rules=(from_members, ALLOW_ALL_OUT), n=1)
    p_member = make_port(net, vni, member, rules=(ALLOW_ALL_OUT, ALLOW_ICMP_IN), n=2)
    p_outsider = make_port(net, vni, outsider, rules=(ALLOW_ALL_OUT, ALLOW_ICMP_IN), n=3)
    g_target = lab.guest(h1, target)
    g_member, g_outsider = lab.guest(h2, p_member), lab.guest(h2, p_outsider)
    for h, p in ((h1, target), (h2, p_member), (h2, p_outsider)):
        h.plug(p)

    assert g_member.ping(g_target.ip)
    assert not g_outsider.ping(g_target.ip)

    # The outsider takes the member's address: its own egress chain drops what it sends.
    sh("ip", "addr", "flush", "dev", "eth0", netns=g_outsider.netns)
    sh("ip", "addr", "add", f"{member}/24", "dev", "eth0", netns=g_outsider.netns)
    # It sends IP straight away (a static neighbour entry, no ARP): its own egress chain
    # drops it.
    sh(
        "ip",
        "neigh",
        "replace",
        g_target.ip,
        "lladdr",
        target.mac,
        "dev",
        "eth0",
        netns=g_outsider.netns,
    )
    spoof = f"loom-s-{p_outsider.port_id[:11]}"
    dropped_before = _dropped(h2.config.netns, spoof)
    assert not g_outsider.ping(g_target.ip)
    assert _dropped(h2.config.netns, spoof) >= dropped_before + 2
    # It claims the member's address by gratuitous ARP: dropped at the bridge, so the
    # target never maps the member's address to the outsider's MAC.
    sh(
        "busybox",
        "arping",
        "-U",
        "-c",
        "2",
        "-I",
        "eth0",
        member,
        netns=g_outsider.netns,
        check=False,
    )
    arp = sh("ebtables", "-L", f"loom-a-{p_outsider.port_id[:11]}", "--Lc", netns=h2.config.netns)
    arp_drop = [line for line in arp.splitlines() if line.startswith("-p ARP -j DROP")]
    assert arp_drop, arp
    assert "pcnt = 0 " not in arp_drop[0], arp
    assert p_outsider.mac not in sh("ip", "neigh", "show", member, netns=g_target.netns)


def _dropped(netns: str, chain: str) -> int:
    for line in sh("iptables", "-w", "-vnxL", chain, netns=netns).splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "DROP":
            return int(fields[0])
    raise AssertionError(f"{chain} has no DROP rule")
