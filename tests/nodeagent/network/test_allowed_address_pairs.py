"""A port's allowed address pairs on its host: the guest may send from a pair's address
(and answer ARP for it, as a VRRP or keepalived address needs), with the pair's MAC when it
names another, and still from nothing else."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.network.model import AddressPair, port_from_proto
from tests.nodeagent.network.netlab import ALLOW_ALL_OUT, ALLOW_ICMP_IN, Lab, make_port, sh

VIP = "10.77.0.99"
VIP2 = "10.78.0.99"


def test_a_guest_sends_from_its_allowed_pair_and_not_from_another_address(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 6000 + int(lab.tag, 16) % 1000
    rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
    peer = make_port(net, vni, "10.77.0.50", rules=rules, n=1)
    base = make_port(net, vni, "10.77.0.51", rules=rules, n=2)
    holder = dataclasses.replace(base, allowed_pairs=(AddressPair(f"{VIP}/32", base.mac),))
    g_peer, g_holder = lab.guest(h1, peer), lab.guest(h2, holder)
    h1.plug(peer)
    h2.plug(holder)
    assert g_holder.ping(g_peer.ip)

    # The guest takes the pair's address as well: the peer reaches it there, and it
    # answers from there.
    sh("ip", "addr", "add", f"{VIP}/24", "dev", "eth0", netns=g_holder.netns)
    assert g_peer.ping(VIP, count=3)

    # Without the pair (a refreshed binding), the same address is cut off again.
    h2.apply_security(dataclasses.replace(holder, allowed_pairs=()))
    sh("ip", "neigh", "flush", "all", netns=g_peer.netns)
    assert not g_peer.ping(VIP, count=2)
    assert g_peer.ping(g_holder.ip)


def test_a_guest_sends_from_a_pairs_other_mac_only_while_the_pair_names_it(
    lab: Lab, tmp_path: Path
) -> None:
    h1, h2 = lab.hosts(2, tmp_path)
    net, vni = str(uuid.uuid4()), 6000 + int(lab.tag, 16) % 1000 + 1
    rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
    peer = make_port(net, vni, "10.78.0.50", rules=rules, n=1)
    base = make_port(net, vni, "10.78.0.51", rules=rules, n=2)
    other_mac = "fa:16:3e:aa:bb:cc"
    holder = dataclasses.replace(base, allowed_pairs=(AddressPair(f"{VIP2}/32", other_mac),))
    g_peer, g_holder = lab.guest(h1, peer), lab.guest(h2, holder)
    h1.plug(peer)
    h2.plug(holder)
    # The guest holds the pair's address on a second interface with the pair's MAC (as a
    # VRRP router's virtual MAC): the peer reaches it there, and the guest's own address
    # still answers from its own MAC.
    sh(
        "ip",
        "link",
        "add",
        "vip0",
        "link",
        "eth0",
        "type",
        "macvlan",
        "mode",
        "bridge",
        netns=g_holder.netns,
    )
    sh("ip", "link", "set", "vip0", "address", other_mac, "up", netns=g_holder.netns)
    sh("ip", "addr", "add", f"{VIP2}/32", "dev", "vip0", netns=g_holder.netns)
    # What it sends from that address leaves by that interface.
    sh("ip", "rule", "add", "from", VIP2, "table", "100", netns=g_holder.netns)
    sh("ip", "route", "add", "10.78.0.0/24", "dev", "vip0", "table", "100", netns=g_holder.netns)
    assert g_peer.ping(VIP2, count=3)
    assert other_mac in sh("ip", "neigh", "show", VIP2, netns=g_peer.netns)
    assert g_peer.ping(g_holder.ip)

    # The same address with the port's own MAC only: the other MAC is cut off.
    h2.apply_security(
        dataclasses.replace(base, allowed_pairs=(AddressPair(f"{VIP2}/32", base.mac),))
    )
    sh("ip", "neigh", "flush", "all", netns=g_peer.netns)
    assert not g_peer.ping(VIP2, count=2)
    assert g_peer.ping(g_holder.ip)


def test_a_binding_keeps_its_pairs_as_ipv4_networks_with_their_macs() -> None:
    binding = pb.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=str(uuid.uuid4()),
        segmentation_id=7,
        mac_address="fa:16:3e:00:00:01",
        port_security_enabled=True,
        allowed_address_pairs=["10.0.0.9"],
        address_pairs=[
            pb.AllowedAddressPair(ip_address="10.0.0.9", mac_address="fa:16:3e:00:00:01"),
            pb.AllowedAddressPair(ip_address="10.1.0.0/24", mac_address="FA:16:3E:00:00:09"),
        ],
    )
    assert port_from_proto(binding).allowed_pairs == (
        AddressPair("10.0.0.9/32", "fa:16:3e:00:00:01"),
        AddressPair("10.1.0.0/24", "fa:16:3e:00:00:09"),
    )


def test_a_binding_without_pair_macs_gives_its_pairs_the_ports_mac() -> None:
    binding = pb.PortBinding(
        port_id=str(uuid.uuid4()),
        network_id=str(uuid.uuid4()),
        segmentation_id=7,
        mac_address="fa:16:3e:00:00:01",
        port_security_enabled=True,
        allowed_address_pairs=["10.0.0.9", "10.1.0.0/24"],
    )
    assert port_from_proto(binding).allowed_pairs == (
        AddressPair("10.0.0.9/32", "fa:16:3e:00:00:01"),
        AddressPair("10.1.0.0/24", "fa:16:3e:00:00:01"),
    )
