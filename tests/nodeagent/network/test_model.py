"""Conversion from loom.compute.v1 messages validates what reaches a command line."""

from __future__ import annotations

import pytest
from loom.compute.v1 import agent_bus_pb2 as pb

from nodeagent.network.firewall import port_chains
from nodeagent.network.model import InvalidNetworkInput, Rule, port_from_proto

PORT_ID = "0b7e6a57-8f0e-4c7b-9d51-9a0f2f6a1c01"
NET_ID = "5f3e0b1c-2d4a-4e8b-8c6d-7e9f0a1b2c3d"


def _binding(**over: object) -> pb.PortBinding:
    fields: dict[str, object] = {
        "port_id": PORT_ID,
        "network_id": NET_ID,
        "segmentation_id": 1001,
        "mac_address": "FA:16:3E:00:00:01",
        "fixed_ips": [pb.FixedIp(subnet_id="s" * 12, ip_address="10.0.0.5", prefixlen=24)],
        "port_security_enabled": True,
    }
    fields.update(over)
    return pb.PortBinding(**fields)  # type: ignore[arg-type]


def test_a_binding_becomes_a_port_with_its_mac_lower_cased_and_the_default_mtu() -> None:
    port = port_from_proto(_binding())
    assert port.mac == "fa:16:3e:00:00:01"
    assert port.mtu == 1450
    assert port.fixed_ips[0].interface.with_prefixlen == "10.0.0.5/24"


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"port_id": "tap0; rm -rf /"}, "port_id"),
        ({"mac_address": "fa:16:3e:00:00"}, "mac_address"),
        ({"segmentation_id": 0}, "segmentation_id"),
        ({"segmentation_id": 1 << 24}, "segmentation_id"),
        ({"mtu": 70000}, "mtu"),
        ({"fixed_ips": [pb.FixedIp(ip_address="10.0.0.300", prefixlen=24)]}, "fixed ip"),
        ({"fixed_ips": [pb.FixedIp(ip_address="10.0.0.3", prefixlen=33)]}, "prefixlen"),
        (
            {
                "security_group_rules": [
                    pb.SecurityGroupRule(
                        direction=pb.RULE_DIRECTION_INGRESS,
                        protocol="tcp",
                        port_range_min=90,
                        port_range_max=80,
                    )
                ]
            },
            "port range",
        ),
        (
            {"security_group_rules": [pb.SecurityGroupRule(protocol="tcp")]},
            "direction",
        ),
        (
            {
                "security_group_rules": [
                    pb.SecurityGroupRule(direction=pb.RULE_DIRECTION_EGRESS, protocol="gre")
                ]
            },
            "protocol",
        ),
    ],
)
def test_a_binding_with_a_bad_field_is_refused_naming_the_field(
    over: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidNetworkInput, match=field):
        port_from_proto(_binding(**over))


def test_rules_become_stateful_chains_that_drop_by_default() -> None:
    rule = pb.SecurityGroupRule(
        direction=pb.RULE_DIRECTION_INGRESS,
        ethertype="IPv4",
        protocol="tcp",
        port_range_min=22,
        port_range_max=22,
        remote_group_id="g" * 12,
        remote_group_member_ips=["10.0.0.7", "10.0.0.8"],
    )
    port = port_from_proto(_binding(security_group_rules=[rule]))
    assert port.rules == (Rule("ingress", "tcp", 22, 22, "", ("10.0.0.7", "10.0.0.8")),)
    lines = port_chains(port)
    i = f"loom-i-{PORT_ID[:11]}"
    mine = [line for line in lines if line.startswith(f"-A {i} ")]
    assert mine == [
        f"-A {i} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-A {i} -m conntrack --ctstate INVALID -j DROP",
        f"-A {i} -p udp -m udp --sport 67 --dport 68 -j ACCEPT",
        f"-A {i} -s 10.0.0.7/32 -p tcp -m tcp --dport 22 -j ACCEPT",
        f"-A {i} -s 10.0.0.8/32 -p tcp -m tcp --dport 22 -j ACCEPT",
        f"-A {i} -j DROP",
    ]
    spoof = [line for line in lines if line.startswith(f"-A loom-s-{PORT_ID[:11]} ")]
    assert spoof[0].endswith("-s 10.0.0.5/32 -m mac --mac-source fa:16:3e:00:00:01 -j RETURN")
    assert spoof[-1].endswith("-j DROP")
