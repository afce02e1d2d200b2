"""Security groups and their rules, and each project's `default` group, made on first use
with the default rules: egress anywhere (IPv4 and IPv6), ingress from the group itself."""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from loom.network.v1 import network_pb2 as pb
from sqlalchemy import delete, exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.dialect import upsert_insert
from controlplane.db.models import (
    DefaultSecurityGroup,
    PortSecurityGroup,
    SecurityGroup,
    SecurityGroupRule,
)
from controlplane.network import quotas, security_changes
from controlplane.network.errors import Conflict, Invalid, not_found
from controlplane.network.scope import Caller, Page, owned
from controlplane.runtime.rpc import new_uuid, now

DEFAULT_NAME = "default"
DIRECTIONS = ("ingress", "egress")
ETHERTYPES = ("IPv4", "IPv6")
# Names Neutron accepts for protocols, with their numbers; a number 0-255 is accepted too.
PROTOCOLS = {
    "ah": 51,
    "dccp": 33,
    "egp": 8,
    "esp": 50,
    "gre": 47,
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ipip": 4,
    "ipv6-encap": 41,
    "ipv6-frag": 44,
    "ipv6-icmp": 58,
    "icmpv6": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "ipv6-route": 43,
    "ospf": 89,
    "pgm": 113,
    "rsvp": 46,
    "sctp": 132,
    "tcp": 6,
    "udp": 17,
    "udplite": 136,
    "vrrp": 112,
}
_PORT_PROTOCOLS = ("tcp", "udp", "sctp", "dccp", "udplite", "6", "17", "132", "33", "136")
_ICMP_PROTOCOLS = ("icmp", "ipv6-icmp", "icmpv6", "1", "58")


def _rule_row(
    project_id: str,
    group_id: str,
    direction: str,
    ethertype: str,
    *,
    protocol: str | None = None,
    port_min: int | None = None,
    port_max: int | None = None,
    remote_ip_prefix: str | None = None,
    remote_group_id: str | None = None,
    description: str = "",
) -> SecurityGroupRule:
    # A prefix is kept as given (10.2.3.124/24), and matches as its network (10.2.3.0/24);
    # any address (a /0) restricts nothing: the same rule as one without a prefix.
    matched_prefix = (
        str(ipaddress.ip_network(remote_ip_prefix, strict=False)) if remote_ip_prefix else None
    )
    if matched_prefix in ("0.0.0.0/0", "::/0"):
        matched_prefix = None
    signature = "|".join(
        "" if v is None else str(v)
        for v in (
            direction,
            ethertype,
            protocol,
            port_min,
            port_max,
            matched_prefix,
            remote_group_id,
        )
    )
    return SecurityGroupRule(
        id=new_uuid(),
        project_id=project_id,
        security_group_id=group_id,
        direction=direction,
        ethertype=ethertype,
        protocol=protocol,
        port_range_min=port_min,
        port_range_max=port_max,
        remote_ip_prefix=remote_ip_prefix,
        remote_group_id=remote_group_id,
        description=description,
        signature=signature,
        revision_number=0,
        created_at=now(),
        updated_at=None,
    )


def _new_group(project_id: str, name: str, description: str) -> SecurityGroup:
    return SecurityGroup(
        id=new_uuid(),
        project_id=project_id,
        name=name,
        description=description,
        stateful=True,
        revision_number=1,
        created_at=now(),
        updated_at=None,
    )


def _egress_rules(group: SecurityGroup) -> list[SecurityGroupRule]:
    return [_rule_row(group.project_id, group.id, "egress", e) for e in ETHERTYPES]


async def ensure_default(sessions: async_sessionmaker[AsyncSession], project_id: str) -> str:
    """The id of the project's default group, made (in its own transaction) when missing.
    Two first uses racing make one group: the loser's insert conflicts and it reads the
    winner's."""
    async with sessions() as s:
        found = await s.scalar(
            select(DefaultSecurityGroup.security_group_id).where(
                DefaultSecurityGroup.project_id == project_id
            )
        )
    if found is not None:
        return found
    group = _new_group(project_id, DEFAULT_NAME, "Default security group")
    rules = [
        *_egress_rules(group),
        *(
            _rule_row(project_id, group.id, "ingress", e, remote_group_id=group.id)
            for e in ETHERTYPES
        ),
    ]
    try:
        async with sessions.begin() as s:
            s.add(group)
            await s.flush()
            s.add_all(rules)
            await s.flush()
            inserted = await s.scalar(
                upsert_insert(s, DefaultSecurityGroup)
                .values(project_id=project_id, security_group_id=group.id)
                .on_conflict_do_nothing()
                .returning(DefaultSecurityGroup.project_id)
            )
            if inserted is None:
                raise _LostRace
    except (_LostRace, IntegrityError):
        pass
    async with sessions() as s:
        winner = await s.scalar(
            select(DefaultSecurityGroup.security_group_id).where(
                DefaultSecurityGroup.project_id == project_id
            )
        )
    assert winner is not None
    return winner


class _LostRace(Exception):
    """Another call made the project's default group first: roll this one back."""


async def get_group(s: AsyncSession, caller: Caller, group_id: str) -> SecurityGroup:
    row = await s.scalar(
        select(SecurityGroup).where(
            SecurityGroup.id == group_id, owned(caller, SecurityGroup.project_id)
        )
    )
    if row is None:
        raise not_found("SecurityGroup", group_id)
    return row


async def rules_of(s: AsyncSession, group_ids: list[str]) -> dict[str, list[SecurityGroupRule]]:
    out: dict[str, list[SecurityGroupRule]] = defaultdict(list)
    if group_ids:
        for r in await s.scalars(
            select(SecurityGroupRule)
            .where(SecurityGroupRule.security_group_id.in_(group_ids))
            .order_by(SecurityGroupRule.id)
        ):
            out[r.security_group_id].append(r)
    return out


async def create_group(
    s: AsyncSession, caller: Caller, req: pb.CreateSecurityGroupRequest, ident: str
) -> SecurityGroup:
    g = req.security_group
    project_id = caller.target_project(g.project_id)
    if g.name == DEFAULT_NAME:
        raise Conflict(
            "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
        )
    await quotas.check(s, project_id, "security_group")
    group = _new_group(project_id, g.name, g.description)
    group.id = ident
    s.add(group)
    await s.flush()
    s.add_all(_egress_rules(group))
    await s.flush()
    return group


async def update_group(
    s: AsyncSession, caller: Caller, req: pb.UpdateSecurityGroupRequest
) -> SecurityGroup:
    group = await get_group(s, caller, req.id)
    if req.HasField("name") and req.name != group.name:
        if group.name == DEFAULT_NAME:
            raise Invalid("Updating default security group not allowed.")
        if req.name == DEFAULT_NAME:
            raise Conflict(
                "SecurityGroupDefaultAlreadyExists", "Default security group already exists."
            )
        group.name = req.name
    if req.HasField("description"):
        group.description = req.description
    group.revision_number += 1
    group.updated_at = now()
    await s.flush()
    return group


async def delete_group(s: AsyncSession, caller: Caller, group_id: str) -> None:
    group = await get_group(s, caller, group_id)
    is_default = await s.scalar(
        select(exists().where(DefaultSecurityGroup.security_group_id == group_id))
    )
    if is_default and not caller.is_admin:
        raise Conflict(
            "SecurityGroupCannotRemoveDefault",
            "Insufficient rights for removing default security group.",
        )
    used = await s.scalar(select(exists().where(PortSecurityGroup.security_group_id == group_id)))
    if used:
        raise Conflict("SecurityGroupInUse", f"Security Group {group_id} in use.")
    # Rules of other groups naming it as their remote group go with it: their ports change.
    touched = await security_changes.affected_ports(s, [group_id], [])
    await security_changes.note_ports(s, [p.id for p in touched])
    await s.execute(delete(SecurityGroupRule).where(SecurityGroupRule.remote_group_id == group_id))
    await s.delete(group)


async def list_groups(s: AsyncSession, caller: Caller, page: Page) -> list[SecurityGroup]:
    query = select(SecurityGroup).where(owned(caller, SecurityGroup.project_id))
    return list(await s.scalars(page.of(query, SecurityGroup.id)))


def _protocol(value: str, ethertype: str) -> str | None:
    if value in ("", "any"):
        return None
    v = value.lower()
    if v in PROTOCOLS:
        if ethertype == "IPv4" and PROTOCOLS[v] == 58:
            raise Invalid(f"protocol {value} is not allowed with ethertype IPv4")
        return v
    if v.isdigit() and 0 <= int(v) <= 255:
        return str(int(v))
    raise Invalid(
        f"Security group rule protocol {value[:40]} not supported. Only protocol values"
        f" {sorted(PROTOCOLS)} and integer representations [0 to 255] are supported."
    )


def _ports(protocol: str | None, r: pb.SecurityGroupRule) -> tuple[int | None, int | None]:
    """The rule's port range (or ICMP type and code), checked with the network API's own
    errors and messages."""
    low = r.port_range_min if r.HasField("port_range_min") else None
    high = r.port_range_max if r.HasField("port_range_max") else None
    if low is None and high is None:
        return None, None
    if protocol in _ICMP_PROTOCOLS:
        for v, field, attr in ((low, "type", "port_range_min"), (high, "code", "port_range_max")):
            if v is not None and not 0 <= v <= 255:
                raise Invalid(
                    f"Invalid value for ICMP {field} ({attr}) {v}. It must be 0 to 255.",
                    "SecurityGroupInvalidIcmpValue",
                )
        if low is None and high is not None:
            raise Invalid(
                f"ICMP code (port-range-max) {high} is provided but ICMP type"
                " (port-range-min) is missing.",
                "SecurityGroupMissingIcmpType",
            )
        return low, high
    for v in (low, high):
        if v is not None and not 0 <= v <= 65535:
            raise Invalid(f"Invalid value for port {v}")
    if protocol not in _PORT_PROTOCOLS:
        raise Invalid(
            "Port range is only valid with protocols tcp, udp, sctp, dccp and udplite"
            " (and ICMP type/code with icmp)"
        )
    if low is None or high is None or low > high:
        raise Invalid(
            "For TCP/UDP protocols, port_range_min must be <= port_range_max",
            "SecurityGroupInvalidPortRange",
        )
    if low == 0:
        raise Invalid("Invalid value for port 0")
    return low, high


async def create_rule(
    s: AsyncSession, caller: Caller, req: pb.CreateSecurityGroupRuleRequest, ident: str
) -> SecurityGroupRule:
    r = req.rule
    group = await get_group(s, caller, r.security_group_id)
    if r.direction not in DIRECTIONS:
        raise Invalid(f"'{r.direction[:20]}' is not in ['ingress', 'egress']")
    ethertype = r.ethertype or "IPv4"
    if ethertype not in ETHERTYPES:
        raise Invalid(f"'{ethertype[:20]}' is not in ['IPv4', 'IPv6']")
    protocol = _protocol(r.protocol, ethertype)
    low, high = _ports(protocol, r)
    prefix: str | None = None
    if r.remote_ip_prefix:
        try:
            net = ipaddress.ip_network(r.remote_ip_prefix, strict=False)
        except ValueError:
            raise Invalid(f"'{r.remote_ip_prefix[:64]}' is not a valid IP subnet") from None
        if (net.version == 4) != (ethertype == "IPv4"):
            raise Invalid(
                f"Conflicting value ethertype {ethertype} for CIDR {net}",
                "SecurityGroupRuleParameterConflict",
            )
        # Shown as given, with its mask made explicit (10.2.3.124 is 10.2.3.124/32), as
        # the Network API does; the hosts match its network.
        prefix = str(ipaddress.ip_interface(r.remote_ip_prefix))
    remote_group: str | None = None
    if r.remote_group_id:
        if r.remote_ip_prefix:
            raise Invalid(
                "Only remote_ip_prefix or remote_group_id may be provided.",
                "SecurityGroupRemoteGroupAndRemoteIpPrefix",
            )
        remote_group = (await get_group(s, caller, r.remote_group_id)).id
    await quotas.check(s, group.project_id, "security_group_rule")
    row = _rule_row(
        group.project_id,
        group.id,
        r.direction,
        ethertype,
        protocol=protocol,
        port_min=low,
        port_max=high,
        remote_ip_prefix=prefix,
        remote_group_id=remote_group,
        description=r.description,
    )
    row.id = ident
    inserted = await s.scalar(
        upsert_insert(s, SecurityGroupRule)
        .values({c.key: getattr(row, c.key) for c in SecurityGroupRule.__table__.columns})
        .on_conflict_do_nothing()
        .returning(SecurityGroupRule.id)
    )
    if inserted is None:
        existing = await s.scalar(
            select(SecurityGroupRule.id).where(
                SecurityGroupRule.security_group_id == group.id,
                SecurityGroupRule.signature == row.signature,
            )
        )
        raise Conflict(
            "SecurityGroupRuleExists", f"Security group rule already exists. Rule id is {existing}."
        )
    group.revision_number += 1
    await security_changes.note_groups(s, [group.id])
    await s.flush()
    return row


async def get_rule(s: AsyncSession, caller: Caller, rule_id: str) -> SecurityGroupRule:
    row = await s.scalar(
        select(SecurityGroupRule).where(
            SecurityGroupRule.id == rule_id, owned(caller, SecurityGroupRule.project_id)
        )
    )
    if row is None:
        raise not_found("SecurityGroupRule", rule_id)
    return row


async def delete_rule(s: AsyncSession, caller: Caller, rule_id: str) -> None:
    row = await get_rule(s, caller, rule_id)
    group = await s.get(SecurityGroup, row.security_group_id)
    await security_changes.note_groups(s, [row.security_group_id])
    await s.delete(row)
    if group is not None:
        group.revision_number += 1


async def list_rules(s: AsyncSession, caller: Caller, page: Page) -> list[SecurityGroupRule]:
    query = select(SecurityGroupRule).where(owned(caller, SecurityGroupRule.project_id))
    return list(await s.scalars(page.of(query, SecurityGroupRule.id)))
