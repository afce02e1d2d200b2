"""The pipeline's decision, reached by walking hosts best first instead of scanning all.

`rank_walking` returns exactly what `pipeline.rank_hosts` returns for the same hosts,
request, pipeline and random source (the same hosts in the same order, the same weights),
but evaluates the filters only on hosts it walks past: usually the best few. It relies on
a `HostOrder` kept in the pipeline's ranking order (one host-only weigher; see
`hostorder.py`), so the normalised weights need only the best and worst hosts that pass.

When fewer hosts than wanted pass, the walk has visited every host, so a NoValidHost
answer still says which filters removed how many hosts, exactly as the full scan does.
For a decision that found hosts, `rejections` count only the hosts walked past.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence

from controlplane.scheduler.filters import Filter
from controlplane.scheduler.hostorder import HostOrder
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.pipeline import (
    _RNG,
    Decision,
    FilterRecord,
    Pipeline,
    WeighedHost,
    _shuffle_best,
)
from controlplane.scheduler.request import CycleState


class _Verdicts:
    """Each host's fate, evaluated once per decision, with the full scan's bookkeeping:
    a host is counted against the first filter that rejects it."""

    def __init__(self, cycle: CycleState, filters: Sequence[Filter]) -> None:
        self.cycle = cycle
        self.filters = filters
        self.passed: dict[str, bool] = {}
        self.reasons: list[Counter[str]] = [Counter() for _ in filters]

    def passes(self, host: HostState) -> bool:
        known = self.passed.get(host.name)
        if known is not None:
            return known
        ok = True
        for i, flt in enumerate(self.filters):
            verdict = flt.filter_host(host, self.cycle)
            if not verdict.passed:
                self.reasons[i][verdict.reason] += 1
                ok = False
                break
        self.passed[host.name] = ok
        return ok

    def records(self) -> tuple[FilterRecord, ...]:
        return tuple(
            FilterRecord(flt.name, sum(r.values()), dict(r))
            for flt, r in zip(self.filters, self.reasons, strict=True)
        )


class _Walk:
    """Host names best first, with a look at the next one without taking it."""

    def __init__(self, names: Iterator[str]) -> None:
        self._names = names
        self._next: str | None = None

    def peek(self) -> str | None:
        if self._next is None:
            self._next = next(self._names, None)
        return self._next

    def take(self) -> str | None:
        name = self.peek()
        self._next = None
        return name


def rank_walking(
    order: HostOrder,
    hosts: Mapping[str, HostState],
    cycle: CycleState,
    pipeline: Pipeline,
    keep: int,
    rng: random.Random | None = None,
) -> Decision:
    """The best `keep` hosts that pass every filter, as `rank_hosts(..., keep=keep)` ranks
    them. `order` must hold exactly the hosts of `hosts`, keyed by the pipeline's order."""
    need = max(keep, pipeline.host_subset_size)
    verdicts = _Verdicts(cycle, pipeline.filters)
    walk = _Walk(order.best_first())
    # Fewer than `need` found means every host was walked: the rejections are complete.
    found = _take_passing(walk, hosts, verdicts, need)
    ww = order.spec.weighed
    if ww is None or not found:
        # No weights (all 0): the order is by name, which is how ties rank.
        weighed = [WeighedHost(h, 0.0) for h in found]
    else:
        lo, hi = _bounds(order, hosts, verdicts, found[0])
        factor = ww.factor

        def weigh(host: HostState) -> float:
            return _weight(order.spec.score(host), lo, hi, factor)

        if len(found) >= need:
            _settle_ties(order, walk, hosts, verdicts, found, weigh)
        weighed = [WeighedHost(h, weigh(h)) for h in found]
    weighed.sort(key=_rank_key)
    ranked = _shuffle_best(weighed[:need], pipeline.host_subset_size, rng or _RNG)[:keep]
    return Decision(
        ranked=tuple(ranked), hosts_considered=len(hosts), rejections=verdicts.records()
    )


def _rank_key(wh: WeighedHost) -> tuple[float, str]:
    # The full scan's order: higher weight first, ties by name.
    return -wh.weight, wh.host.name


def _take_passing(
    walk: _Walk, hosts: Mapping[str, HostState], verdicts: _Verdicts, n: int
) -> list[HostState]:
    found: list[HostState] = []
    while len(found) < n:
        name = walk.take()
        if name is None:
            break
        host = hosts[name]
        if verdicts.passes(host):
            found.append(host)
    return found


def _bounds(
    order: HostOrder, hosts: Mapping[str, HostState], verdicts: _Verdicts, best: HostState
) -> tuple[float, float]:
    """The lowest and highest score among all hosts that pass (as the full scan sees them).

    `best` is the first passing host walked; the worst is the first passing one walking
    from the other end (usually the very last host).
    """
    high = order.spec.score(best)
    low = high
    for name in order.worst_first():
        host = hosts[name]
        if verdicts.passes(host):
            low = order.spec.score(host)
            break
    return (low, high) if order.spec.descending else (high, low)


def _weight(score: float, lo: float, hi: float, factor: float) -> float:
    # The very arithmetic of pipeline._weigh and normalise, so weights compare equal.
    normalised = 0.0 if hi == lo else (score - lo) / (hi - lo)
    return 0.0 + factor * normalised


def _settle_ties(
    order: HostOrder,
    walk: _Walk,
    hosts: Mapping[str, HostState],
    verdicts: _Verdicts,
    found: list[HostState],
    weigh: Callable[[HostState], float],
) -> None:
    """Walks on while an unseen host could still outrank the worst one found.

    Unseen hosts with the same score as the worst found come later by name, so they rank
    below it. A worse score normally means a lower weight, but rounding can normalise two
    close scores to the same weight, which then ranks by name: so walk on until the best
    unseen host with a worse score has a strictly lower weight.
    """
    while True:
        worst = max(found, key=lambda h: (-weigh(h), h.name))
        nxt = walk.peek()
        if nxt is None:
            return
        bound = hosts[nxt]
        score = order.spec.score(worst)
        if order.spec.score(bound) == score:
            below = order.first_ranked_below(score)
            if below is None:
                return
            bound = hosts[below]
        if weigh(bound) < weigh(worst):
            return
        more = _take_passing(walk, hosts, verdicts, 1)
        if not more:
            return
        found.extend(more)
