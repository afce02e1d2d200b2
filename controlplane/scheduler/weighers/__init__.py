"""Host weighers: each scores hosts; the pipeline normalises and multiplies by a factor.

Operators name weighers and their factors in SchedulerConfig.weighers; `build_weighers`
resolves the names through the registry, and an unknown name stops the scheduler at start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controlplane.scheduler.weighers import few_instances, free_ram, free_vcpu
from controlplane.scheduler.weighers.base import HostScoreWeigher, Weigher

WeigherFactory = Callable[[], Weigher]

REGISTRY: dict[str, WeigherFactory] = {
    free_ram.NAME: free_ram.FreeRamWeigher,
    free_vcpu.NAME: free_vcpu.FreeVcpuWeigher,
    few_instances.NAME: few_instances.FewInstancesWeigher,
}


class UnknownWeigherError(ValueError):
    """A configured weigher name is not in the registry, or its factor is not a number."""


@dataclass(frozen=True, slots=True)
class WeightedWeigher:
    """A weigher and the factor its normalised score is multiplied by."""

    weigher: Weigher
    factor: float


def build_weighers(factors: Mapping[str, float]) -> list[WeightedWeigher]:
    """One weigher per configured name, with its factor, in the mapping's order.

    Raises UnknownWeigherError naming every unknown name (or non-finite factor).
    """
    unknown = [n for n in factors if n not in REGISTRY]
    if unknown:
        raise UnknownWeigherError(
            f"unknown scheduler weigher(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(REGISTRY))}"
        )
    bad = [n for n, f in factors.items() if not math.isfinite(f)]
    if bad:
        raise UnknownWeigherError(f"weigher factor must be a finite number: {', '.join(bad)}")
    return [WeightedWeigher(REGISTRY[n](), float(f)) for n, f in factors.items()]


__all__ = [
    "REGISTRY",
    "HostScoreWeigher",
    "UnknownWeigherError",
    "Weigher",
    "WeightedWeigher",
    "build_weighers",
]
