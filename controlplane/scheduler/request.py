"""What a consumer asks the scheduler for, and the values one decision computes once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.scheduler.hoststate import DEFAULT_AVAILABILITY_ZONE, Resources

HARD_POLICIES = ("affinity", "anti-affinity")
# Flavor extra specs under this scope (and unscoped ones) are matched against aggregate
# metadata.
AGGREGATE_EXTRA_SPECS_SCOPE = "aggregate_instance_extra_specs"
SOFT_POLICIES = ("soft-affinity", "soft-anti-affinity")


@dataclass(frozen=True, slots=True)
class GroupPolicy:
    """A server group's policy: where the group's members may go, relative to each other."""

    id: str
    policy: str
    name: str = ""
    max_server_per_host: int = 1

    def __post_init__(self) -> None:
        if self.policy not in HARD_POLICIES + SOFT_POLICIES:
            raise ValueError(f"unknown server group policy {self.policy!r}")
        if self.max_server_per_host < 1:
            raise ValueError("max_server_per_host must be at least 1")

    @property
    def label(self) -> str:
        return f"{self.policy} (group {self.name or self.id})"


@dataclass(frozen=True, slots=True)
class GroupRule:
    """One decision's view of a group: members per host, and which hosts it allows.

    `only` restricts the hosts to one (affinity); `at_most` caps members per host
    (anti-affinity). A soft policy is tried as a sequence of such rules, strictest first,
    the last allowing every host (`GroupRule.tiers`).
    """

    group: GroupPolicy
    members: Mapping[str, int]
    only: str | None = None
    at_most: int | None = None

    def reason(self, host: str) -> str:
        """Why `host` breaks this rule; empty when it does not."""
        # One text per rule, whatever the host: NoValidHost counts hosts by reason.
        if self.only is not None and host != self.only:
            return f"{self.group.label}: its members are on {self.only}"
        if self.at_most is not None and self.members.get(host, 0) >= self.at_most:
            return f"{self.group.label}: the host holds {self.at_most} member(s) already"
        return ""

    @staticmethod
    def tiers(group: GroupPolicy, members: Mapping[str, int]) -> list[GroupRule]:
        """The rules to try in order; the first that some host passes decides."""
        busiest = sorted(members.items(), key=lambda kv: (-kv[1], kv[0]))
        if group.policy == "affinity":
            return [GroupRule(group, members, only=busiest[0][0] if busiest else None)]
        if group.policy == "anti-affinity":
            return [GroupRule(group, members, at_most=group.max_server_per_host)]
        if group.policy == "soft-affinity":
            # The host with the most members first, then the others holding some, then any.
            return [*(GroupRule(group, members, only=h) for h, _ in busiest), GroupRule(group, {})]
        # soft-anti-affinity: hosts with the fewest members first, then any.
        fewest = sorted(set(members.values()) | {0})
        return [GroupRule(group, members, at_most=n + 1) for n in fewest] + [GroupRule(group, {})]


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """One consumer's placement: what it needs and where it may (not) go."""

    consumer_id: str
    resources: Resources
    project_id: str = ""
    availability_zone: str = ""
    ignore_hosts: frozenset[str] = frozenset()
    force_host: str = ""
    num_alternates: int = 0
    request_id: str = ""
    group: GroupPolicy | None = None
    # Instances (consumer ids) the host must hold one of (same_host hint; empty: no such
    # constraint), and instances it must hold none of (different_host hint).
    same_host: frozenset[str] = frozenset()
    different_host: frozenset[str] = frozenset()
    # Read by the aggregate filters.
    flavor_extra_specs: Mapping[str, str] = field(default_factory=dict, compare=False)
    image_properties: Mapping[str, str] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class HintHosts:
    """Where the instances a request's same_host and different_host hints name are: the
    hosts holding their allocations, read once per decision. A named instance that holds
    no allocation (unknown, deleted, not placed yet) is on no host and does not count."""

    # Hosts holding at least one same_host instance; None when the request has no
    # same_host hint (any host will do), empty when none of its instances is anywhere.
    same_host: frozenset[str] | None = None
    # Hosts holding at least one different_host instance.
    different_host: frozenset[str] = frozenset()


NO_HINT_HOSTS = HintHosts()


@dataclass(frozen=True, slots=True)
class CycleState:
    """Values one scheduling decision computes once and every filter and weigher shares.

    Filters run once per host; anything that depends only on the request or the clock
    belongs here rather than being recomputed per host.
    """

    request: PlacementRequest
    now: datetime
    down_after: timedelta
    # The server-group rule this decision keeps; None when the consumer has no group.
    group_rule: GroupRule | None = None
    # The hosts of the instances named by the same_host and different_host hints.
    hint_hosts: HintHosts = NO_HINT_HOSTS
    # The zone of hosts in no zone aggregate.
    default_zone: str = DEFAULT_AVAILABILITY_ZONE
    # The zone a host must be in, or None for any ("nova" also matches hosts in no zone).
    zone: str | None = field(init=False)
    # The flavor's extra specs the aggregate_instance_extra_specs filter matches, by
    # metadata key (scope removed); empty when there are none.
    aggregate_extra_specs: Mapping[str, str] = field(init=False)

    def __post_init__(self) -> None:
        zone = self.request.availability_zone.strip() or None
        object.__setattr__(self, "zone", zone)
        specs: dict[str, str] = {}
        for key, value in self.request.flavor_extra_specs.items():
            scope, sep, rest = key.partition(":")
            if not sep:
                specs[key] = value
            elif scope == AGGREGATE_EXTRA_SPECS_SCOPE and rest:
                specs[rest] = value
        object.__setattr__(self, "aggregate_extra_specs", specs)

    @property
    def zone_is_default(self) -> bool:
        return self.zone == self.default_zone
