"""The placement pipeline: filter, weigh, rank. Pure: reads a snapshot, returns a decision.

The pipeline never writes. The caller claims the first ranked host and, when that claim
loses a race, refreshes the host and ranks again (see `scheduler.py`).
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from controlplane.config import SchedulerConfig
from controlplane.scheduler.filters import (
    Filter,
    build_filters,
    different_host,
    requested_hosts,
    same_host,
    server_group,
)
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState
from controlplane.scheduler.weighers import WeightedWeigher, build_weighers


@dataclass(frozen=True, slots=True)
class FilterRecord:
    """How many hosts one filter removed, and the reasons with a count each."""

    filter: str
    hosts_removed: int
    reasons: Mapping[str, int]


class WeighedHost(NamedTuple):
    """A host that passed every filter and its combined weight (higher is better).

    A named tuple rather than a frozen dataclass: one is built per fit host per decision,
    and tuples are several times cheaper to build.
    """

    host: HostState
    weight: float


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one run: hosts best first, and why the others were removed."""

    ranked: tuple[WeighedHost, ...]
    hosts_considered: int
    rejections: tuple[FilterRecord, ...]

    @property
    def found(self) -> bool:
        return bool(self.ranked)

    def explain(self) -> str:
        """One sentence naming which filters removed how many hosts."""
        removed = [
            f"{r.filter} removed {r.hosts_removed} ({_reasons_text(r.reasons)})"
            for r in self.rejections
            if r.hosts_removed
        ]
        detail = "; ".join(removed) if removed else "no host is known"
        return f"No valid host among {self.hosts_considered} considered: {detail}."


def _reasons_text(reasons: Mapping[str, int]) -> str:
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items()))


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Configured filters (in order) and weighers (with factors)."""

    filters: tuple[Filter, ...]
    weighers: tuple[WeightedWeigher, ...]
    host_subset_size: int = 1


_RNG = random.Random()


def build_pipeline(cfg: SchedulerConfig) -> Pipeline:
    """The pipeline an operator configured.

    The request's own host constraints (ignore_hosts, force_host) always apply, first,
    and its server group's policy always applies, last, even when the configuration does
    not name them: a policy the API accepted is never ignored. So do its same_host and
    different_host hints (just before the group's policy when not named). Raises on
    unknown names.
    """
    names = list(cfg.filters)
    if requested_hosts.NAME not in names:
        names.insert(0, requested_hosts.NAME)
    if server_group.NAME not in names:
        names.append(server_group.NAME)
    for hint in (same_host.NAME, different_host.NAME):
        if hint not in names:
            names.insert(names.index(server_group.NAME), hint)
    return Pipeline(
        filters=tuple(build_filters(names)),
        weighers=tuple(build_weighers(cfg.weighers)),
        host_subset_size=cfg.host_subset_size,
    )


def rank_hosts(
    hosts: Sequence[HostState],
    cycle: CycleState,
    pipeline: Pipeline,
    rng: random.Random | None = None,
    keep: int | None = None,
) -> Decision:
    """The hosts that can take the request, best first (at most `keep` of them, all when
    None), with each filter's rejections."""
    # Filters in configured order; the defaults put cheap set and flag checks before
    # capacity arithmetic, so most hosts leave the pipeline as early as possible.
    candidates, records = _apply_filters(hosts, cycle, pipeline.filters)
    # Weigh only the survivors: weighers rank and never remove, so they run once per fit host.
    weighed = _weigh(candidates, cycle, pipeline.weighers, _at_least(keep, pipeline))
    # Pick at random among the best few, so concurrent schedulers rarely race for one host.
    ranked = _shuffle_best(weighed, pipeline.host_subset_size, rng or _RNG)[:keep]
    return Decision(ranked=tuple(ranked), hosts_considered=len(hosts), rejections=records)


def _apply_filters(
    hosts: Iterable[HostState], cycle: CycleState, filters: Sequence[Filter]
) -> tuple[list[HostState], tuple[FilterRecord, ...]]:
    survivors = list(hosts)
    records: list[FilterRecord] = []
    for flt in filters:
        kept: list[HostState] = []
        reasons: Counter[str] = Counter()
        for host in survivors:
            verdict = flt.filter_host(host, cycle)
            if verdict.passed:
                kept.append(host)
            else:
                reasons[verdict.reason] += 1
        records.append(FilterRecord(flt.name, len(survivors) - len(kept), dict(reasons)))
        survivors = kept
    return survivors, tuple(records)


def _at_least(keep: int | None, pipeline: Pipeline) -> int | None:
    return None if keep is None else max(keep, pipeline.host_subset_size)


def _weigh(
    hosts: Sequence[HostState],
    cycle: CycleState,
    weighers: Sequence[WeightedWeigher],
    keep: int | None,
) -> list[WeighedHost]:
    totals = [0.0] * len(hosts)
    for ww in weighers:
        raw = [ww.weigher.weigh_host(h, cycle) for h in hosts]
        for i, score in enumerate(normalise(raw)):
            totals[i] += ww.factor * score

    # Ties break by name so a decision is reproducible.
    def order(i: int) -> tuple[float, str]:
        return -totals[i], hosts[i].name

    # A decision needs only its best few: a partial sort of indexes, then a few objects.
    indexes = range(len(hosts))
    best = sorted(indexes, key=order) if keep is None else heapq.nsmallest(keep, indexes, order)
    return [WeighedHost(hosts[i], totals[i]) for i in best]


def normalise(values: Sequence[float]) -> list[float]:
    """Rescales to [0, 1]: the lowest becomes 0, the highest 1; all equal gives all 0."""
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi == lo:
        return [0.0] * len(values)
    span = hi - lo
    return [(v - lo) / span for v in values]


def _shuffle_best(
    weighed: list[WeighedHost], subset_size: int, rng: random.Random
) -> list[WeighedHost]:
    if subset_size <= 1 or len(weighed) <= 1:
        return weighed
    k = min(subset_size, len(weighed))
    pick = rng.randrange(k)
    return [weighed[pick], *weighed[:pick], *weighed[pick + 1 :]]
