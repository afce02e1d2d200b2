"""The data plane's typed input: frozen values made from `loom.compute.v1` messages.

Conversion validates everything that reaches a command line (ids, MACs, addresses), so
the plumbing below never quotes or second-guesses its arguments.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from loom.compute.v1 import agent_bus_pb2

# Where guests find the metadata service (OpenStack and EC2 layouts), on every network.
METADATA_IP = "169.254.169.254"
DEFAULT_MTU = 1450  # 1500 on the underlay less the 50 bytes VXLAN over IPv4 adds

_ID = re.compile(r"^[0-9a-zA-Z][0-9a-zA-Z-]{10,63}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_PROTOCOLS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "6": "tcp", "17": "udp", "1": "icmp"}

Direction = Literal["ingress", "egress"]


class InvalidNetworkInput(ValueError):
    """A binding the agent cannot wire: the message says which field is wrong."""


def _id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise InvalidNetworkInput(f"{what} is not a valid id")
    return value


def _mac(value: str, what: str = "mac_address") -> str:
    mac = value.lower()
    if not _MAC.match(mac):
        raise InvalidNetworkInput(f"{what} is not a MAC address")
    return mac


def _ipv4(value: str, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise InvalidNetworkInput(f"{what} is not an IPv4 address") from exc


def _vni(value: int) -> int:
    if not 1 <= value <= 0xFFFFFF:
        raise InvalidNetworkInput("segmentation_id is not a VXLAN VNI (1..16777215)")
    return value


def _mtu(value: int) -> int:
    if value == 0:
        return DEFAULT_MTU
    if not 576 <= value <= 9000:
        raise InvalidNetworkInput("mtu is out of range (576..9000)")
    return value


@dataclass(frozen=True)
class FixedIp:
    subnet_id: str
    ip: str
    prefixlen: int
    gateway: str = ""
    dns: tuple[str, ...] = ()

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.ip}/{self.prefixlen}")


@dataclass(frozen=True)
class Rule:
    """One security group rule, IPv4, with remote groups already resolved to addresses."""

    direction: Direction
    protocol: str = ""  # "", "tcp", "udp" or "icmp"
    port_min: int = 0
    port_max: int = 0
    remote_prefix: str = ""  # CIDR; "" means any
    # None: the rule names no remote group. A tuple (maybe empty): only these addresses.
    remote_ips: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AddressPair:
    """An allowed address pair: an IPv4 network (a /32 for one address) the port may send
    from, with the source MAC it may use for it."""

    net: str
    mac: str


@dataclass(frozen=True)
class Port:
    port_id: str
    network_id: str
    vni: int
    mac: str
    fixed_ips: tuple[FixedIp, ...] = ()
    mtu: int = DEFAULT_MTU
    rules: tuple[Rule, ...] = ()
    port_security: bool = True
    allowed_pairs: tuple[AddressPair, ...] = ()

    def source_macs(self) -> list[str]:
        """The MACs the port may send from: its own, then its pairs' others, each once."""
        macs = [self.mac]
        for pair in self.allowed_pairs:
            if pair.mac not in macs:
                macs.append(pair.mac)
        return macs


@dataclass(frozen=True)
class RouterLeg:
    """A router's port on one network: a veth from the network's bridge into the router's
    namespace, holding the port's MAC and addresses."""

    port_id: str
    network_id: str
    vni: int
    mac: str
    fixed_ips: tuple[FixedIp, ...]
    mtu: int = DEFAULT_MTU


@dataclass(frozen=True)
class FloatingIpMapping:
    """Traffic to `floating_ip` goes to `fixed_ip` (DNAT); `fixed_ip` leaves as
    `floating_ip` (SNAT)."""

    floating_ip_id: str
    floating_ip: str
    fixed_ip: str
    port_id: str


@dataclass(frozen=True)
class Router:
    """One router as the L3 host serves it. Validated by `router_from_proto`: the gateway
    leg, when there is one, has a first fixed IP with a gateway (the next hop), every
    interface leg an IPv4 address, and floating IPs come only with a gateway leg."""

    router_id: str
    revision: int = 0
    admin_state_up: bool = True
    gateway: RouterLeg | None = None
    enable_snat: bool = True
    interfaces: tuple[RouterLeg, ...] = ()
    floating_ips: tuple[FloatingIpMapping, ...] = ()
    deleted: bool = False

    @property
    def serving(self) -> bool:
        """False when the host should not hold the router at all (down or deleted)."""
        return self.admin_state_up and not self.deleted

    @property
    def legs(self) -> tuple[RouterLeg, ...]:
        return ((self.gateway,) if self.gateway else ()) + self.interfaces

    @property
    def network_ids(self) -> set[str]:
        return {leg.network_id for leg in self.legs}


@dataclass(frozen=True)
class DhcpSubnet:
    subnet_id: str
    cidr: str
    server_ip: str
    gateway: str = ""
    dns: tuple[str, ...] = ()

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


@dataclass(frozen=True)
class DhcpLease:
    mac: str
    ip: str
    hostname: str = ""


@dataclass(frozen=True)
class NetworkDhcp:
    network_id: str
    vni: int
    subnets: tuple[DhcpSubnet, ...]
    leases: tuple[DhcpLease, ...] = ()
    mtu: int = DEFAULT_MTU
    server_mac: str = ""


def _rule_from_proto(msg: agent_bus_pb2.SecurityGroupRule) -> Rule | None:
    """The rule as the data plane applies it; None for an IPv6 rule (IPv6 is not wired)."""
    if msg.ethertype and msg.ethertype != "IPv4":
        return None
    if msg.direction == agent_bus_pb2.RULE_DIRECTION_INGRESS:
        direction: Direction = "ingress"
    elif msg.direction == agent_bus_pb2.RULE_DIRECTION_EGRESS:
        direction = "egress"
    else:
        raise InvalidNetworkInput("security group rule has no direction")
    protocol = ""
    if msg.protocol and msg.protocol.lower() not in ("any", "0"):
        found = _PROTOCOLS.get(msg.protocol.lower())
        if found is None:
            raise InvalidNetworkInput(f"protocol {msg.protocol[:16]!r} is not supported")
        protocol = found
    lo, hi = msg.port_range_min, msg.port_range_max
    if protocol in ("tcp", "udp"):
        if (lo, hi) != (0, 0) and not (1 <= lo <= hi <= 65535):
            raise InvalidNetworkInput("port range is invalid")
    elif protocol == "icmp":
        if not (0 <= lo <= 255 and 0 <= hi <= 255):
            raise InvalidNetworkInput("ICMP type/code is invalid")
    elif (lo, hi) != (0, 0):
        raise InvalidNetworkInput("a port range needs tcp, udp or icmp")
    prefix = ""
    if msg.remote_ip_prefix:
        try:
            prefix = str(ipaddress.IPv4Network(msg.remote_ip_prefix, strict=False))
        except ValueError as exc:
            raise InvalidNetworkInput("remote_ip_prefix is not an IPv4 CIDR") from exc
    remote_ips = None
    if msg.remote_group_id:
        remote_ips = tuple(
            _ipv4(ip, "remote group member") for ip in msg.remote_group_member_ips if ":" not in ip
        )
    return Rule(direction, protocol, lo, hi, prefix, remote_ips)


def _fixed_ips(msgs: Iterable[agent_bus_pb2.FixedIp]) -> tuple[FixedIp, ...]:
    return tuple(
        FixedIp(
            subnet_id=f.subnet_id,
            ip=_ipv4(f.ip_address, "fixed ip"),
            prefixlen=f.prefixlen if 0 < f.prefixlen <= 32 else _bad_prefix(),
            gateway=_ipv4(f.gateway_ip, "gateway_ip") if f.gateway_ip else "",
            dns=tuple(_ipv4(d, "dns nameserver") for d in f.dns_nameservers),
        )
        for f in msgs
        if ":" not in f.ip_address  # IPv6 addresses are not wired (docs/networking.md)
    )


def port_from_proto(msg: agent_bus_pb2.PortBinding) -> Port:
    """A validated `Port`; raises InvalidNetworkInput naming the bad field."""
    fixed = _fixed_ips(msg.fixed_ips)
    rules = tuple(r for r in map(_rule_from_proto, msg.security_group_rules) if r is not None)
    mac = _mac(msg.mac_address)
    given = (
        [(p.ip_address, p.mac_address) for p in msg.address_pairs]
        if msg.address_pairs
        else [(ip, mac) for ip in msg.allowed_address_pairs]  # a control plane before pair MACs
    )
    pairs = []
    for ip, pair_mac in given:
        try:
            net = str(ipaddress.IPv4Network(ip, strict=False))
        except ValueError as exc:
            raise InvalidNetworkInput("allowed address pair is not IPv4") from exc
        pairs.append(AddressPair(net, _mac(pair_mac, "allowed address pair mac_address")))
    return Port(
        port_id=_id(msg.port_id, "port_id"),
        network_id=_id(msg.network_id, "network_id"),
        vni=_vni(msg.segmentation_id),
        mac=mac,
        fixed_ips=fixed,
        mtu=_mtu(msg.mtu),
        rules=rules,
        port_security=msg.port_security_enabled,
        allowed_pairs=tuple(pairs),
    )


def _bad_prefix() -> int:
    raise InvalidNetworkInput("prefixlen is out of range")


def dhcp_from_proto(msg: agent_bus_pb2.NetworkDhcp) -> NetworkDhcp:
    """A validated `NetworkDhcp`; raises InvalidNetworkInput naming the bad field."""
    subnets = []
    for s in msg.subnets:
        try:
            net = ipaddress.IPv4Network(s.cidr)
        except ValueError as exc:
            raise InvalidNetworkInput("subnet cidr is not an IPv4 network") from exc
        server = _ipv4(s.dhcp_server_ip, "dhcp_server_ip")
        if ipaddress.IPv4Address(server) not in net:
            raise InvalidNetworkInput("dhcp_server_ip is outside the subnet")
        subnets.append(
            DhcpSubnet(
                subnet_id=_id(s.subnet_id, "subnet_id"),
                cidr=str(net),
                server_ip=server,
                gateway=_ipv4(s.gateway_ip, "gateway_ip") if s.gateway_ip else "",
                dns=tuple(_ipv4(d, "dns nameserver") for d in s.dns_nameservers),
            )
        )
    if not subnets:
        raise InvalidNetworkInput("a DHCP service needs at least one subnet")
    leases = []
    for lease in msg.leases:
        if lease.hostname and not _HOSTNAME.match(lease.hostname):
            raise InvalidNetworkInput("lease hostname is not a valid host name")
        leases.append(
            DhcpLease(_mac(lease.mac_address), _ipv4(lease.ip_address, "lease ip"), lease.hostname)
        )
    server_mac = _mac(msg.dhcp_mac_address, "dhcp_mac_address") if msg.dhcp_mac_address else ""
    if server_mac and any(lease.mac == server_mac for lease in leases):
        # The bridge would learn one MAC on two ports: that guest would get no replies.
        raise InvalidNetworkInput("dhcp_mac_address is also the MAC of a lease")
    return NetworkDhcp(
        network_id=_id(msg.network_id, "network_id"),
        vni=_vni(msg.vni),
        subnets=tuple(subnets),
        leases=tuple(leases),
        mtu=_mtu(msg.mtu),
        server_mac=server_mac,
    )


def _leg_from_proto(msg: agent_bus_pb2.RouterLeg, what: str) -> RouterLeg:
    try:
        leg = RouterLeg(
            port_id=_id(msg.port_id, "port_id"),
            network_id=_id(msg.network_id, "network_id"),
            vni=_vni(msg.segmentation_id),
            mac=_mac(msg.mac_address),
            fixed_ips=_fixed_ips(msg.fixed_ips),
            mtu=_mtu(msg.mtu),
        )
    except InvalidNetworkInput as exc:
        raise InvalidNetworkInput(f"{what}: {exc}") from exc
    if not leg.fixed_ips:
        raise InvalidNetworkInput(f"{what}: fixed_ips holds no IPv4 address")
    return leg


def _gateway_from_proto(msg: agent_bus_pb2.RouterLeg) -> RouterLeg:
    leg = _leg_from_proto(msg, "gateway leg")
    first = leg.fixed_ips[0]
    if not first.gateway:
        raise InvalidNetworkInput(
            "gateway leg: its first fixed ip needs a gateway_ip (the router's next hop)"
        )
    gateway = ipaddress.IPv4Address(first.gateway)
    if gateway not in first.interface.network or gateway == first.interface.ip:
        raise InvalidNetworkInput(
            "gateway leg: gateway_ip must be another address of the fixed ip's subnet"
        )
    return leg


def _floating_ip_from_proto(msg: agent_bus_pb2.FloatingIpMapping) -> FloatingIpMapping:
    try:
        return FloatingIpMapping(
            floating_ip_id=_id(msg.floating_ip_id, "floating_ip_id"),
            floating_ip=_ipv4(msg.floating_ip_address, "floating_ip_address"),
            fixed_ip=_ipv4(msg.fixed_ip_address, "fixed_ip_address"),
            port_id=_id(msg.port_id, "port_id"),
        )
    except InvalidNetworkInput as exc:
        raise InvalidNetworkInput(f"floating ip: {exc}") from exc


def router_from_proto(msg: agent_bus_pb2.RouterBinding) -> Router:
    """A validated `Router`; raises InvalidNetworkInput naming the bad field. IPv6 fixed
    IPs are left out (not wired), as for ports. A binding that is deleted or down becomes
    a Router without legs: the host removes it, and nothing but its id can stop that."""
    router_id = _id(msg.router_id, "router_id")
    if msg.deleted or not msg.admin_state_up:
        return Router(
            router_id=router_id,
            revision=msg.revision,
            admin_state_up=msg.admin_state_up,
            enable_snat=msg.enable_snat,
            deleted=msg.deleted,
        )
    gateway = _gateway_from_proto(msg.gateway) if msg.HasField("gateway") else None
    interfaces = tuple(
        _leg_from_proto(leg, f"interface {n}") for n, leg in enumerate(msg.interfaces)
    )
    legs = ((gateway,) if gateway else ()) + interfaces
    keys: set[str] = set()
    vnis: dict[str, int] = {}
    for leg in legs:
        if leg.port_id[:11] in keys:
            # Device names hold the port id's first 11 characters only.
            raise InvalidNetworkInput(
                f"port_id {leg.port_id} is on two legs (or shares its first 11 characters)"
            )
        keys.add(leg.port_id[:11])
        if vnis.setdefault(leg.network_id, leg.vni) != leg.vni:
            raise InvalidNetworkInput(
                f"segmentation_id differs between two legs on network {leg.network_id}"
            )
    floating = tuple(_floating_ip_from_proto(f) for f in msg.floating_ips)
    if floating and gateway is None:
        raise InvalidNetworkInput("floating_ips need the router's gateway leg")
    seen: set[str] = set()
    mapped: set[str] = set()
    for fip in floating:
        if fip.floating_ip in seen:
            raise InvalidNetworkInput(f"floating_ip_address {fip.floating_ip} appears twice")
        if fip.fixed_ip in mapped:
            # Its outgoing traffic could leave as only one of them (SNAT).
            raise InvalidNetworkInput(f"fixed_ip_address {fip.fixed_ip} has two floating IPs")
        seen.add(fip.floating_ip)
        mapped.add(fip.fixed_ip)
    return Router(
        router_id=router_id,
        revision=msg.revision,
        admin_state_up=msg.admin_state_up,
        gateway=gateway,
        enable_snat=msg.enable_snat,
        interfaces=interfaces,
        floating_ips=floating,
        deleted=msg.deleted,
    )
