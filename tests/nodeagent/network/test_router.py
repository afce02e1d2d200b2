"""Routers on the L3 host: a `qrouter-` namespace per router, legs on the networks'
bridges, floating IPs (DNAT/SNAT) and source NAT on the gateway leg.

The lab: host A (the L3 host, and the external network's gateway: 203.0.113.1 on its
external bridge) and host B, joined by a veth underlay; guests on host B reach the router
on host A across the VXLAN."""

from __future__ import annotations

import contextlib
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.network import (
    FixedIp,
    FloatingIpMapping,
    HostDataPlane,
    Router,
    RouterLeg,
    bridge_name,
    router_from_proto,
    vxlan_name,
)
from nodeagent.network.model import InvalidNetworkInput, Rule
from nodeagent.network.names import router_bridge_end, router_gateway_bridge_end
from nodeagent.network.router import NETNS_DIR, nat_rules
from tests.nodeagent.network.netlab import (
    ALLOW_ALL_OUT,
    ALLOW_ICMP_IN,
    Guest,
    Lab,
    make_port,
    sh,
)

EXT_GATEWAY = "203.0.113.1"  # the L3 host itself, on the external bridge
ROUTER_ADDRESS = "203.0.113.3"  # the router's gateway leg
FLOATING_IP = "203.0.113.10"
_TIMER = re.compile(r"\b\w+_timer\s+[\d.]+")
TENANT_GATEWAY = "10.77.0.1"  # the router's interface leg (make_port's gateway)


def _ping(netns: str, ip: str, count: int = 2) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "busybox", "ping", "-c", str(count), "-W", "1", ip],
        capture_output=True,
        check=False,
        timeout=30,
    )
    return proc.returncode == 0


def _links(netns: str) -> set[str]:
    return {
        line.split(":")[1].strip().split("@")[0]
        for line in sh("ip", "-o", "link", netns=netns).splitlines()
    }


def _leg(network_id: str, vni: int, address: str, gateway: str = "", n: int = 1) -> RouterLeg:
    return RouterLeg(
        port_id=str(uuid.uuid4()),
        network_id=network_id,
        vni=vni,
        mac=f"fa:16:3e:aa:00:{n:02x}",
        fixed_ips=(FixedIp("subnet-0000-0009", address, 24, gateway),),
        mtu=1450,
    )


@dataclass
class RoutedLab:
    """Host A serves `router` (gateway on `external`, one interface on `tenant`); host B
    has guests on `tenant`."""

    l3: HostDataPlane
    compute: HostDataPlane
    lab: Lab
    tenant: str
    tenant_vni: int
    external: str
    router: Router

    def guest(self, ip: str, n: int, *, rules: tuple[Rule, ...] | None = None) -> Guest:
        """A guest on host B behind the router (default route via its interface)."""
        if rules is None:
            rules = (ALLOW_ICMP_IN, ALLOW_ALL_OUT)
        port = make_port(self.tenant, self.tenant_vni, ip, rules=rules, n=n)
        guest = self.lab.guest(self.compute, port)
        self.compute.plug(port)
        sh("ip", "route", "add", "default", "via", TENANT_GATEWAY, netns=guest.netns)
        return guest

    @property
    def l3_netns(self) -> str:
        return self.l3.config.netns

    def router_netns(self) -> str:
        return self.l3.routers.namespace(self.router.router_id)

    def count_echo_requests_from(self, source: str) -> int:
        """Echo requests host A received from `source` (a counting rule in its INPUT)."""
        spec = ["INPUT", "-s", source, "-p", "icmp", "--icmp-type", "echo-request", "-j", "ACCEPT"]
        if subprocess.run(
            ["ip", "netns", "exec", self.l3_netns, "iptables", "-w", "-C", *spec],
            capture_output=True,
            check=False,
        ).returncode:
            sh("iptables", "-w", "-A", *spec, netns=self.l3_netns)
        for line in sh("iptables", "-w", "-vnxL", "INPUT", netns=self.l3_netns).splitlines():
            fields = line.split()
            if len(fields) > 7 and fields[7] == source and fields[2] == "ACCEPT":
                return int(fields[0])
        raise AssertionError(f"no counting rule for {source}")


@pytest.fixture
def routed(lab: Lab, tmp_path: Path) -> Iterator[RoutedLab]:
    l3, compute = lab.hosts(2, tmp_path)
    base = 3000 + int(lab.tag, 16) % 1000
    tenant, external = str(uuid.uuid4()), str(uuid.uuid4())
    router = Router(
        router_id=str(uuid.uuid4()),
        revision=1,
        gateway=_leg(external, base + 1, ROUTER_ADDRESS, EXT_GATEWAY, n=1),
        enable_snat=True,
        interfaces=(_leg(tenant, base, TENANT_GATEWAY, n=2),),
        floating_ips=(
            FloatingIpMapping(str(uuid.uuid4()), FLOATING_IP, "10.77.0.11", str(uuid.uuid4())),
        ),
    )
    made = RoutedLab(l3, compute, lab, tenant, base, external, router)
    try:
        yield made
    finally:
        # Router namespaces are not the lab's: remove them before the lab goes.
        for plane in lab.planes:
            with contextlib.suppress(Exception):  # the namespaces go below in any case
                plane.reconcile([], routers=[])
        for plane in lab.planes:
            for left in NETNS_DIR.glob(f"{plane.config.netns}-qrouter-*"):
                sh("ip", "netns", "del", left.name, check=False)


def test_a_guest_across_the_vxlan_answers_its_floating_ip_and_leaves_by_it(
    routed: RoutedLab,
) -> None:
    with_fip = routed.guest("10.77.0.11", 1)
    without = routed.guest("10.77.0.12", 2)
    ns = routed.l3.ensure_router(routed.router)
    assert ns == f"{routed.l3_netns}-qrouter-{routed.router.router_id}"

    # DNAT: the L3 host reaches the guest on host B by its floating IP.
    assert _ping(routed.l3_netns, FLOATING_IP, count=3)

    # SNAT: the guest with a floating IP reaches the host as its floating IP; the other
    # as the router's gateway address.
    fip_before = routed.count_echo_requests_from(FLOATING_IP)
    gw_before = routed.count_echo_requests_from(ROUTER_ADDRESS)
    assert with_fip.ping(EXT_GATEWAY)
    assert routed.count_echo_requests_from(FLOATING_IP) >= fip_before + 2
    assert routed.count_echo_requests_from(ROUTER_ADDRESS) == gw_before
    assert without.ping(EXT_GATEWAY)
    assert routed.count_echo_requests_from(ROUTER_ADDRESS) >= gw_before + 2


def test_without_a_rule_letting_icmp_in_the_floating_ip_does_not_answer(
    routed: RoutedLab,
) -> None:
    guest = routed.guest("10.77.0.11", 1, rules=(ALLOW_ALL_OUT,))
    routed.l3.ensure_router(routed.router)
    # The port's ingress chain denies by default: DNAT does not open the guest.
    assert not _ping(routed.l3_netns, FLOATING_IP)
    # What the guest starts still comes back (stateful): its ping out works.
    assert guest.ping(EXT_GATEWAY)
    routed.compute.plug(replace(guest.port, rules=(ALLOW_ICMP_IN, ALLOW_ALL_OUT)))
    assert _ping(routed.l3_netns, FLOATING_IP)


def _snapshot(routed: RoutedLab) -> tuple[str, ...]:
    """What ensure writes, as the kernel shows it (bridge timers, which tick, left out)."""
    ns = routed.router_netns()
    return (
        _TIMER.sub("", sh("ip", "-d", "addr", netns=ns)),
        _TIMER.sub("", sh("ip", "-d", "addr", netns=routed.l3_netns)),
        sh("ip", "route", netns=ns),
        sh("iptables", "-t", "nat", "-S", netns=ns),
        sh("sysctl", "-n", "net.ipv4.ip_forward", netns=ns),
    )


def test_ensure_is_idempotent_and_a_floating_ip_taken_away_stops_answering(
    routed: RoutedLab,
) -> None:
    guest = routed.guest("10.77.0.11", 1)
    routed.l3.ensure_router(routed.router)
    before = _snapshot(routed)
    assert before[4].strip() == "1"
    assert f"inet {FLOATING_IP}/32" in before[0]
    assert f"inet {EXT_GATEWAY}/24" in before[1]
    assert f"default via {EXT_GATEWAY} dev qg-" in before[2]
    assert [line for line in before[3].splitlines() if line.startswith("-A")] == nat_rules(
        routed.router
    )
    routed.l3.ensure_router(routed.router)
    type(routed.l3)(routed.l3.config).ensure_router(routed.router)  # a restarted agent
    # Same devices (ifindex), addresses, routes and NAT: nothing was made again.
    assert _snapshot(routed) == before

    unmapped = replace(routed.router, revision=2, floating_ips=())
    routed.l3.ensure_router(unmapped)
    after = _snapshot(routed)
    assert FLOATING_IP not in after[0]
    assert "DNAT" not in after[3]
    assert not _ping(routed.l3_netns, FLOATING_IP)
    # The guest now leaves as the router's gateway address (enable_snat).
    gw_before = routed.count_echo_requests_from(ROUTER_ADDRESS)
    assert guest.ping(EXT_GATEWAY)
    assert routed.count_echo_requests_from(ROUTER_ADDRESS) >= gw_before + 2

    # No source NAT either: the guest's address reaches the external network unchanged
    # (and the host has no route back to it).
    routed.l3.ensure_router(replace(unmapped, revision=3, enable_snat=False))
    assert [
        line
        for line in sh("iptables", "-t", "nat", "-S", netns=routed.router_netns()).splitlines()
        if line.startswith("-A")
    ] == []
    assert not guest.ping(EXT_GATEWAY)


def test_a_leg_taken_away_goes_with_its_bridge_and_a_leg_added_gets_one(
    routed: RoutedLab,
) -> None:
    l3 = routed.l3
    l3.ensure_router(routed.router)
    leg = routed.router.interfaces[0]
    assert router_bridge_end(leg.port_id) in _links(routed.l3_netns)
    assert bridge_name(routed.tenant) in _links(routed.l3_netns)

    second_net = str(uuid.uuid4())
    second = _leg(second_net, routed.tenant_vni + 500, "10.78.0.1", n=3)
    l3.ensure_router(replace(routed.router, interfaces=(second,), floating_ips=()))
    links = _links(routed.l3_netns)
    inside = _links(routed.router_netns())
    assert router_bridge_end(leg.port_id) not in links
    assert f"qr-{leg.port_id[:11]}" not in inside
    assert f"qr-{second.port_id[:11]}" in inside
    assert bridge_name(routed.tenant) not in links
    assert {bridge_name(second_net), vxlan_name(second.vni)} <= links
    assert l3.state().routers == {routed.router.router_id: {routed.external, second_net}}
    nat = sh("iptables", "-t", "nat", "-S", netns=routed.router_netns())
    assert "-s 10.78.0.0/24" in nat
    assert "-s 10.77.0.0/24" not in nat


def test_remove_router_cleans_up_and_a_bridge_stays_while_a_router_leg_uses_it(
    routed: RoutedLab,
) -> None:
    l3, router = routed.l3, routed.router
    remote = routed.guest("10.77.0.11", 1)
    links_before = _links(routed.l3_netns)
    l3.ensure_router(router)
    rid = router.router_id
    assert l3.state().routers == {rid: {routed.external, routed.tenant}}

    # A guest of the L3 host on the tenant network comes and goes: the router's leg keeps
    # the bridge and its VXLAN, so the remote guest still reaches the router.
    local = make_port(routed.tenant, routed.tenant_vni, "10.77.0.21", n=9)
    l3.plug(local)
    l3.unplug(local.port_id)
    assert {bridge_name(routed.tenant), vxlan_name(routed.tenant_vni)} <= _links(routed.l3_netns)
    assert remote.ping(EXT_GATEWAY)

    # Neither reconcile without routers (None: leave them) nor one that keeps it removes it.
    l3.reconcile([])
    l3.reconcile([], routers=[router])
    assert l3.state().routers == {rid: {routed.external, routed.tenant}}
    assert remote.ping(EXT_GATEWAY)

    l3.remove_router(rid)
    assert not (NETNS_DIR / routed.router_netns()).exists()
    assert l3.state().routers == {}
    # Its veths and both bridges (nothing else here used them) are gone.
    assert _links(routed.l3_netns) == links_before
    l3.remove_router(rid)  # succeeds if already absent


def test_a_router_set_down_or_left_out_of_reconcile_is_removed_and_drift_is_repaired(
    routed: RoutedLab,
) -> None:
    l3, router = routed.l3, routed.router
    guest = routed.guest("10.77.0.11", 1)
    assert l3.ensure_router(replace(router, admin_state_up=False)) is None
    assert l3.state().routers == {}

    l3.ensure_router(router)
    # Drift: the nat table flushed, the interface leg deleted, forwarding off.
    ns = routed.router_netns()
    sh("iptables", "-t", "nat", "-F", netns=ns)
    sh("ip", "link", "del", f"qr-{router.interfaces[0].port_id[:11]}", netns=ns)
    sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=0", netns=ns)
    restarted = type(l3)(l3.config)
    restarted.reconcile([], routers=[router])
    assert _ping(routed.l3_netns, FLOATING_IP)
    assert guest.ping(EXT_GATEWAY)

    restarted.reconcile([], routers=[replace(router, deleted=True)])
    assert restarted.state().routers == {}
    assert router.gateway is not None
    assert router_gateway_bridge_end(router.gateway.port_id) not in _links(routed.l3_netns)
    assert bridge_name(routed.external) not in _links(routed.l3_netns)


# router_from_proto: plain unit tests, no lab.

ROUTER_ID = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
EXT_NET = "5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d"
TENANT_NET = "6a4f1c2d-3e5b-4f9c-9d7e-8f0a1b2c3d4e"


def _pb_leg(n: int, network: str, address: str, gateway: str = "", **over: object) -> pb.RouterLeg:
    fields: dict[str, object] = {
        "port_id": f"{n}{n}{n}{n}aaaa-0000-4000-8000-00000000000{n}",
        "network_id": network,
        "segmentation_id": 100 + n,
        "mac_address": f"FA:16:3E:00:AA:0{n}",
        "fixed_ips": [
            pb.FixedIp(subnet_id="s" * 12, ip_address=address, prefixlen=24, gateway_ip=gateway)
        ],
    }
    fields.update(over)
    return pb.RouterLeg(**fields)  # type: ignore[arg-type]


def _binding(**over: object) -> pb.RouterBinding:
    fields: dict[str, object] = {
        "router_id": ROUTER_ID,
        "revision": 4,
        "admin_state_up": True,
        "gateway": _pb_leg(1, EXT_NET, "203.0.113.3", "203.0.113.1"),
        "enable_snat": True,
        "interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.1")],
        "floating_ips": [
            pb.FloatingIpMapping(
                floating_ip_id="f" * 12,
                floating_ip_address="203.0.113.10",
                fixed_ip_address="10.0.0.5",
                port_id="p" * 12,
            )
        ],
    }
    fields.update(over)
    return pb.RouterBinding(**fields)  # type: ignore[arg-type]


def test_a_binding_becomes_a_router_with_lower_cased_macs_and_the_default_mtu() -> None:
    router = router_from_proto(_binding())
    assert router.serving
    assert router.gateway is not None
    assert router.gateway.mac == "fa:16:3e:00:aa:01"
    assert router.gateway.mtu == 1450
    assert router.gateway.fixed_ips[0].gateway == "203.0.113.1"
    assert router.network_ids == {EXT_NET, TENANT_NET}
    assert router.floating_ips[0].fixed_ip == "10.0.0.5"
    assert not router_from_proto(_binding(deleted=True)).serving
    assert not router_from_proto(_binding(admin_state_up=False)).serving
    bare = router_from_proto(pb.RouterBinding(router_id=ROUTER_ID, admin_state_up=True))
    assert bare.gateway is None
    assert nat_rules(bare) == []


def test_the_nat_table_maps_floating_ips_before_the_subnets_source_nat() -> None:
    router = router_from_proto(_binding())
    qg = "qg-1111aaaa-00"
    assert nat_rules(router) == [
        "-A PREROUTING -d 203.0.113.10/32 -j DNAT --to-destination 10.0.0.5",
        "-A OUTPUT -d 203.0.113.10/32 -j DNAT --to-destination 10.0.0.5",
        f"-A POSTROUTING -s 10.0.0.5/32 -o {qg} -j SNAT --to-source 203.0.113.10",
        f"-A POSTROUTING -s 10.0.0.0/24 -o {qg} -j SNAT --to-source 203.0.113.3",
    ]
    assert nat_rules(replace(router, enable_snat=False, floating_ips=())) == []


@pytest.mark.parametrize(
    ("over", "sentence"),
    [
        ({"router_id": "r; rm -rf /"}, "router_id is not a valid id"),
        (
            {"gateway": _pb_leg(1, EXT_NET, "203.0.113.3")},
            "gateway leg: its first fixed ip needs a gateway_ip",
        ),
        (
            {"gateway": _pb_leg(1, EXT_NET, "203.0.113.3", "198.51.100.1")},
            "gateway leg: gateway_ip must be another address of the fixed ip's subnet",
        ),
        (
            {"gateway": _pb_leg(1, EXT_NET, "203.0.113.3", "203.0.113.1", mac_address="fa:16")},
            "gateway leg: mac_address is not a MAC address",
        ),
        (
            {"interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.1", segmentation_id=0)]},
            "interface 0: segmentation_id is not a VXLAN VNI",
        ),
        (
            {"interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.1", mtu=100)]},
            "interface 0: mtu is out of range",
        ),
        (
            {"interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.300")]},
            "interface 0: fixed ip is not an IPv4 address",
        ),
        (
            {"interfaces": [_pb_leg(2, "net", "10.0.0.1")]},
            "interface 0: network_id is not a valid id",
        ),
        (
            {"interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.1", fixed_ips=[])]},
            "interface 0: fixed_ips holds no IPv4 address",
        ),
        (
            {"interfaces": [_pb_leg(1, TENANT_NET, "10.0.0.1")]},
            "is on two legs",
        ),
        (
            {
                "interfaces": [
                    _pb_leg(2, TENANT_NET, "10.0.0.1"),
                    _pb_leg(3, TENANT_NET, "10.0.1.1", segmentation_id=102 + 5),
                ]
            },
            "segmentation_id differs between two legs",
        ),
        (
            {
                "floating_ips": [
                    pb.FloatingIpMapping(
                        floating_ip_id="f" * 12,
                        floating_ip_address="2001:db8::10",
                        fixed_ip_address="10.0.0.5",
                        port_id="p" * 12,
                    )
                ]
            },
            "floating ip: floating_ip_address is not an IPv4 address",
        ),
        (
            {
                "floating_ips": [
                    pb.FloatingIpMapping(
                        floating_ip_id="f" * 12,
                        floating_ip_address="203.0.113.10",
                        fixed_ip_address="10.0.0.5",
                        port_id="p" * 12,
                    )
                ]
                * 2
            },
            "floating_ip_address 203.0.113.10 appears twice",
        ),
    ],
)
def test_a_binding_with_a_bad_field_is_refused_with_a_sentence_naming_it(
    over: dict[str, object], sentence: str
) -> None:
    with pytest.raises(InvalidNetworkInput, match=sentence):
        router_from_proto(_binding(**over))


def test_a_deleted_or_down_binding_is_removed_by_its_id_whatever_its_legs_say() -> None:
    bad_leg = {"interfaces": [_pb_leg(2, TENANT_NET, "10.0.0.300")]}
    for state in ({"deleted": True}, {"admin_state_up": False}):
        router = router_from_proto(_binding(**bad_leg, **state))
        assert not router.serving
        assert router.router_id == ROUTER_ID
        assert router.legs == ()
    with pytest.raises(InvalidNetworkInput, match="router_id"):
        router_from_proto(_binding(router_id="x", deleted=True))


def test_a_floating_ip_without_a_gateway_leg_is_refused() -> None:
    binding = _binding()
    binding.ClearField("gateway")
    with pytest.raises(InvalidNetworkInput, match="floating_ips need the router's gateway leg"):
        router_from_proto(binding)
