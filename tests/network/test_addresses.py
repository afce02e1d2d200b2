"""The pure address arithmetic behind IPAM: defaults, validation and free candidates."""

from __future__ import annotations

import ipaddress

import pytest

from controlplane.network import addresses
from controlplane.network.errors import Conflict, Invalid

NET = ipaddress.IPv4Network("10.0.0.0/24")


@pytest.mark.parametrize(
    ("gateway", "pools"),
    [
        pytest.param(
            "10.0.0.1", [("10.0.0.2", "10.0.0.254")], id="gateway first: one pool after it"
        ),
        pytest.param(
            "10.0.0.254", [("10.0.0.1", "10.0.0.253")], id="gateway last: one pool before"
        ),
        pytest.param(
            "10.0.0.100",
            [("10.0.0.1", "10.0.0.99"), ("10.0.0.101", "10.0.0.254")],
            id="gateway inside: two pools around it",
        ),
        pytest.param(None, [("10.0.0.1", "10.0.0.254")], id="no gateway: every host address"),
    ],
)
def test_default_pools_are_every_host_address_but_the_gateway(
    gateway: str | None, pools: list[tuple[str, str]]
) -> None:
    gw = None if gateway is None else ipaddress.IPv4Address(gateway)
    got = [(str(p.start), str(p.end)) for p in addresses.default_pools(NET, gw)]
    assert got == pools


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        pytest.param("10.0.0.5/24", "recommended", id="host bits set"),
        pytest.param("10.0.0.0/31", "no usable address", id="too long a prefix"),
        pytest.param("fd00::/64", "IPv6", id="IPv6"),
        pytest.param("ten/8", "not a valid IP subnet", id="not a CIDR"),
    ],
)
def test_a_bad_cidr_is_refused_with_a_reason(cidr: str, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        addresses.parse_cidr(cidr)


@pytest.mark.parametrize(
    ("pools", "error"),
    [
        pytest.param([("10.0.0.1", "10.0.0.9")], Conflict, id="a pool holding the gateway"),
        pytest.param([("10.0.0.9", "10.0.0.5")], Invalid, id="a pool ending before it starts"),
        pytest.param(
            [("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.20")], Invalid, id="overlapping pools"
        ),
        pytest.param([("10.0.0.2", "10.0.1.9")], Invalid, id="a pool outside the subnet"),
        pytest.param(
            [("10.0.0.2", "10.0.0.255")], Invalid, id="a pool reaching the broadcast address"
        ),
    ],
)
def test_bad_allocation_pools_are_refused(
    pools: list[tuple[str, str]], error: type[Exception]
) -> None:
    with pytest.raises(error):
        addresses.check_pools(NET, ipaddress.IPv4Address("10.0.0.1"), pools)


def test_free_candidates_skip_what_is_held_and_the_gateway_and_stop_at_the_limit() -> None:
    pools = addresses.pools_of([{"start": "10.0.0.1", "end": "10.0.0.6"}])
    got = addresses.free_candidates(pools, {"10.0.0.2", "10.0.0.4"}, "10.0.0.1", limit=2)
    assert got == ["10.0.0.3", "10.0.0.5"]
    assert addresses.free_candidates(pools, {f"10.0.0.{i}" for i in range(2, 7)}, "10.0.0.1") == []


@pytest.mark.parametrize(
    ("mac", "normal"),
    [
        pytest.param("FA:16:3E:00:00:01", "fa:16:3e:00:00:01", id="upper case"),
        pytest.param("fa-16-3e-00-00-02", "fa:16:3e:00:00:02", id="dashes"),
    ],
)
def test_a_mac_is_normalised(mac: str, normal: str) -> None:
    assert addresses.normalise_mac(mac) == normal


@pytest.mark.parametrize(
    "mac", ["01:00:5e:00:00:01", "00:00:00:00:00:00", "fa:16:3e:00:00", "zz:16:3e:00:00:01"]
)
def test_a_multicast_null_or_malformed_mac_is_refused(mac: str) -> None:
    with pytest.raises(Invalid):
        addresses.normalise_mac(mac)


def test_generated_macs_carry_the_prefix() -> None:
    mac = addresses.random_mac()
    assert mac.startswith("fa:16:3e:")
    assert addresses.normalise_mac(mac) == mac
