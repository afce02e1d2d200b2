"""Every known host, kept in the order the pipeline would rank it, as hosts change.

The pipeline's ranking depends on the request only through its filters when the weights
come from one weigher whose score depends on the host alone (a `HostScoreWeigher`): the
normalisation to [0, 1] and the factor preserve its order, and ties go by name. So the
order can be kept up to date as each host changes (O(log n) per change), and a decision
can walk it best first, stopping once it has found enough hosts that pass the filters
(see `walk.py`), instead of filtering and weighing the whole fleet.

Pure: no I/O. The host cache tells the order about every host it takes.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.weighers import HostScoreWeigher, WeightedWeigher

# (signed score, name): ascending is best first. Negating an int-valued float is exact.
OrderKey = tuple[float, str]


@dataclass(frozen=True, slots=True)
class OrderSpec:
    """What the order ranks by: the one weigher with a nonzero factor, or none (by name)."""

    weighed: WeightedWeigher | None
    # The weigher's host_score, resolved once: it runs several times per decision.
    score: Callable[[HostState], float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weigher = self.weighed.weigher if self.weighed is not None else None
        if weigher is None:
            score: Callable[[HostState], float] = _no_score
        elif isinstance(weigher, HostScoreWeigher):
            score = weigher.host_score
        else:
            raise TypeError(f"weigher {weigher.name!r} scores by request, not by host alone")
        object.__setattr__(self, "score", score)

    @property
    def descending(self) -> bool:
        """True when a higher score ranks first (a positive factor)."""
        return self.weighed is not None and self.weighed.factor > 0


def _no_score(host: HostState) -> float:
    return 0.0


def order_spec_for(weighers: tuple[WeightedWeigher, ...]) -> OrderSpec | None:
    """The order the pipeline ranks by, or None when no host-only order reproduces it.

    Weighers with a zero factor add exactly 0 to every weight, so they do not count.
    Two or more weighers with nonzero factors rank by normalisation bounds that depend on
    which hosts passed the filters, which no request-independent order can follow.
    """
    active = [ww for ww in weighers if ww.factor != 0]
    if not active:
        return OrderSpec(None)
    if len(active) > 1 or not isinstance(active[0].weigher, HostScoreWeigher):
        return None
    return OrderSpec(active[0])


class HostOrder:
    """Host names ordered best first by one host-only score, then by name."""

    def __init__(self, spec: OrderSpec) -> None:
        self.spec = spec
        self._sign = -1.0 if spec.descending else 1.0
        # A plain sorted list: a move is two binary searches and a memmove of pointers,
        # a few microseconds at 10,000 hosts.
        self._keys: list[OrderKey] = []
        self._key_of: dict[str, OrderKey] = {}

    def __len__(self) -> int:
        return len(self._key_of)

    def key(self, host: HostState) -> OrderKey:
        return (self._sign * self.spec.score(host), host.name)

    def put(self, host: HostState) -> None:
        """Places (or moves) `host` by its current score. Cheap when the score is unchanged."""
        key = self.key(host)
        old = self._key_of.get(host.name)
        if old == key:
            return
        if old is not None:
            del self._keys[bisect.bisect_left(self._keys, old)]
        bisect.insort(self._keys, key)
        self._key_of[host.name] = key

    def best_first(self) -> Iterator[str]:
        """Host names, best first."""
        for _, name in self._keys:
            yield name

    def worst_first(self) -> Iterator[str]:
        for _, name in reversed(self._keys):
            yield name

    def first_ranked_below(self, score: float) -> str | None:
        """The best host whose score ranks strictly below `score`, or None."""
        signed = self._sign * score
        # (next float above, ) sorts before every key with that first element.
        i = bisect.bisect_left(self._keys, (math.nextafter(signed, math.inf),))
        return self._keys[i][1] if i < len(self._keys) else None
