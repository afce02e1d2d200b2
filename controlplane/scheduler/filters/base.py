"""The filter interface: a filter says, for one host and one request, pass or reject."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.request import CycleState


@dataclass(frozen=True, slots=True)
class Verdict:
    """A filter's answer for one host: passed, or rejected with a reason constant."""

    passed: bool
    reason: str = ""

    @staticmethod
    def reject(reason: str) -> Verdict:
        return Verdict(passed=False, reason=reason)


PASSED = Verdict(passed=True)


class Filter(Protocol):
    """Removes hosts that cannot take a request.

    A filter is pure: it reads the host snapshot and the cycle state, and the same inputs
    always give the same verdict. "Unschedulable here" is a rejected Verdict; a filter
    never raises for a host that merely does not fit.
    """

    @property
    def name(self) -> str: ...

    def filter_host(self, host: HostState, cycle: CycleState) -> Verdict: ...
