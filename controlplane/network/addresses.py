"""Address arithmetic for IPAM, pure: subnet validation, default gateway and pools, the
free addresses of a subnet, MAC addresses. The database makes allocation atomic
(store.allocate_address); this module only says which addresses are candidates.

IPv4 only: an IPv6 subnet is refused by the service (see docs/design.md)."""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from controlplane.network.errors import Conflict, Invalid

# Neutron's base MAC: fa:16:3e, then three random octets.
MAC_PREFIX = "fa:16:3e"
MAX_DNS_NAMESERVERS = 5
MAX_HOST_ROUTES = 20
# The smallest subnet with a usable host besides the gateway.
MAX_PREFIXLEN = 30


@dataclass(frozen=True)
class Pool:
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    def as_dict(self) -> dict[str, str]:
        return {"start": str(self.start), "end": str(self.end)}

    def __contains__(self, address: ipaddress.IPv4Address) -> bool:
        return self.start <= address <= self.end


def random_mac(rng: random.Random | None = None) -> str:
    r = rng or random.SystemRandom()
    return MAC_PREFIX + "".join(f":{r.randrange(256):02x}" for _ in range(3))


def normalise_mac(value: str) -> str:
    """A unicast MAC in lower case with colons; Invalid otherwise."""
    parts = value.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise Invalid(f"'{value[:40]}' is not a valid MAC address")
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        raise Invalid(f"'{value[:40]}' is not a valid MAC address") from None
    if octets[0] & 1 or not any(octets):
        raise Invalid(f"'{value[:40]}' is not a valid unicast MAC address")
    return ":".join(parts)


def parse_cidr(value: str) -> ipaddress.IPv4Network:
    """The subnet's network; Invalid for IPv6, host bits set or a prefix too long."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise Invalid(f"'{value[:64]}' is not a valid IP subnet") from None
    if net.version != 4:
        raise Invalid("IPv6 subnets are not supported by this cloud")
    if str(net) != value:
        raise Invalid(f"'{value[:64]}' isn't a recommended CIDR, '{net}' is recommended")
    if net.prefixlen > MAX_PREFIXLEN:
        raise Invalid(f"the prefix length of {net} leaves no usable address (at most /30)")
    assert isinstance(net, ipaddress.IPv4Network)
    return net


def parse_ip(value: str, what: str = "IP address") -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"'{value[:64]}' is not a valid {what}") from None
    if address.version != 4:
        raise Invalid(f"'{value[:64]}' is not an IPv4 {what}")
    assert isinstance(address, ipaddress.IPv4Address)
    return address


def host_address(net: ipaddress.IPv4Network, value: str) -> ipaddress.IPv4Address:
    """An address of `net` a host may hold (not the network or broadcast address)."""
    address = parse_ip(value)
    if address not in net:
        raise Invalid(f"IP address {address} is not a valid IP for the specified subnet.")
    if address in (net.network_address, net.broadcast_address):
        raise Invalid(f"IP address {address} is not a valid IP for the specified subnet.")
    return address


def default_gateway(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + 1


def default_pools(net: ipaddress.IPv4Network, gateway: ipaddress.IPv4Address | None) -> list[Pool]:
    """Every host address of `net` but the gateway, as one or two ranges."""
    first, last = net.network_address + 1, net.broadcast_address - 1
    if gateway is None or not first <= gateway <= last:
        return [Pool(first, last)]
    pools = []
    if gateway > first:
        pools.append(Pool(first, gateway - 1))
    if gateway < last:
        pools.append(Pool(gateway + 1, last))
    return pools


def check_pools(
    net: ipaddress.IPv4Network,
    gateway: ipaddress.IPv4Address | None,
    given: Sequence[tuple[str, str]],
) -> list[Pool]:
    """The pools asked for, each within the subnet's hosts, not overlapping one another and
    not holding the gateway (409 GatewayConflictWithAllocationPools)."""
    pools = []
    for start_s, end_s in given:
        start, end = host_address(net, start_s), host_address(net, end_s)
        if start > end:
            raise Invalid(f"allocation pool {start}-{end} ends before it starts")
        pools.append(Pool(start, end))
    pools.sort(key=lambda p: p.start)
    for a, b in itertools.pairwise(pools):
        if b.start <= a.end:
            raise Invalid(f"allocation pools {a.start}-{a.end} and {b.start}-{b.end} overlap")
    if gateway is not None:
        for p in pools:
            if gateway in p:
                raise Conflict(
                    "GatewayConflictWithAllocationPools",
                    f"Gateway ip {gateway} conflicts with allocation pool {p.start}-{p.end}.",
                )
    return pools


def check_dns(values: Iterable[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        address = str(parse_ip(v, "nameserver"))
        if address in out:
            raise Invalid(f"Duplicate nameserver '{address}'")
        out.append(address)
    if len(out) > MAX_DNS_NAMESERVERS:
        raise Invalid(f"at most {MAX_DNS_NAMESERVERS} DNS nameservers per subnet")
    return out


def check_routes(values: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for destination, nexthop in values:
        try:
            dest = ipaddress.ip_network(destination)
        except ValueError:
            raise Invalid(f"'{destination[:64]}' is not a valid host route destination") from None
        if dest.version != 4:
            raise Invalid("IPv6 host routes are not supported by this cloud")
        route = {"destination": str(dest), "nexthop": str(parse_ip(nexthop, "nexthop"))}
        if route in out:
            raise Invalid(f"Duplicate hostroute '{dest}'")
        out.append(route)
    if len(out) > MAX_HOST_ROUTES:
        raise Invalid(f"at most {MAX_HOST_ROUTES} host routes per subnet")
    return out


def free_candidates(
    pools: Sequence[Pool], used: set[str], gateway: str | None, limit: int = 64
) -> list[str]:
    """Up to `limit` addresses of the pools that nobody holds, lowest first."""
    out: list[str] = []
    for address in _walk(pools):
        text = str(address)
        if text in used or text == gateway:
            continue
        out.append(text)
        if len(out) >= limit:
            break
    return out


def _walk(pools: Sequence[Pool]) -> Iterator[ipaddress.IPv4Address]:
    for p in pools:
        address = p.start
        while address <= p.end:
            yield address
            if address == p.end:
                break
            address += 1


def pools_of(rows: Iterable[dict[str, str]]) -> list[Pool]:
    return [Pool(parse_ip(r["start"]), parse_ip(r["end"])) for r in rows]
