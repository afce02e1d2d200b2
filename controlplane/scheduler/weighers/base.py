"""The weigher interface: a weigher scores one host with a raw number, higher is better."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState


class Weigher(Protocol):
    """Scores a host that passed every filter.

    The raw number can be in any unit: the pipeline rescales each weigher's scores to
    [0, 1] over the hosts of one decision and multiplies by the configured factor, so
    weighers in different units compose, and a negative factor inverts a preference.
    """

    @property
    def name(self) -> str: ...

    def weigh_host(self, host: HostState, cycle: CycleState) -> float: ...


@runtime_checkable
class HostScoreWeigher(Weigher, Protocol):
    """An optional capability: a weigher whose score depends on the host alone.

    Postcondition: `weigh_host(host, cycle) == host_score(host)` for every cycle. The
    scheduler can then keep hosts ordered by that score as they change, and walk them best
    first instead of weighing the whole fleet for each decision.
    """

    def host_score(self, host: HostState) -> float: ...
