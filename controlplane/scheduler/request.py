"""What a consumer asks the scheduler for, and the values one decision computes once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from controlplane.scheduler.hoststate import DEFAULT_AVAILABILITY_ZONE, Resources


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


@dataclass(frozen=True, slots=True)
class CycleState:
    """Values one scheduling decision computes once and every filter and weigher shares.

    Filters run once per host; anything that depends only on the request or the clock
    belongs here rather than being recomputed per host.
    """

    request: PlacementRequest
    now: datetime
    down_after: timedelta
    # The zone a host must be in, or None for any ("nova" also matches hosts in no zone).
    zone: str | None = field(init=False)

    def __post_init__(self) -> None:
        zone = self.request.availability_zone.strip() or None
        object.__setattr__(self, "zone", zone)

    @property
    def zone_is_default(self) -> bool:
        return self.zone == DEFAULT_AVAILABILITY_ZONE
