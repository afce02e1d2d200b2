"""Waiting for a condition by polling it, and the bounds tests wait with.

A bound is never a timing assert: a test that meets its condition goes on at once, and the
bound only decides when a test that never will gives up, saying what it waited for. Each
bound is a figure that docs/design.md ("Timing figures the tests hold Loom to") gives,
computed from the configuration default or code constant it derives from.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from controlplane.conductor.context import SchedulerClient
from controlplane.conductor.outbox import Relay
from controlplane.config import LoomConfig

T = TypeVar("T")

# How often a condition is looked at: short against every bound below, long enough that
# polling costs little.
EVERY_S = 0.05


def _default(callable_: Callable[..., object], name: str) -> float:
    value = inspect.signature(callable_).parameters[name].default
    assert isinstance(value, int | float), f"{callable_.__qualname__}({name}=) has no default"
    return float(value)


# The deadline the conductor puts on every scheduler call (SchedulerClient's default).
SCHEDULER_CALL_DEADLINE_S = _default(SchedulerClient.__init__, "timeout")
# How often the outbox relay looks for rows when nothing woke it (Relay's default).
RELAY_POLL_S = _default(Relay.__init__, "poll_interval")
# The delay before JetStream redelivers a message a conductor worker gave back (NAK):
# the scheduling worker and the event consumer both give back with this delay.
REDELIVERY_DELAY_S = 1.0
# gRPC's longest reconnect backoff (grpc.max_reconnect_backoff_ms, 120 s by default): how
# long a channel may take to notice that a server it lost is back.
GRPC_MAX_RECONNECT_BACKOFF_S = 120.0


def conductor_step_s(relay_poll_s: float = RELAY_POLL_S) -> float:
    """With every service up, one step of the conductor's path (a row relayed, an instance
    scheduled, an agent's event applied, a command on its host's subject) is done within a
    relay poll, one scheduler call deadline and one redelivery delay."""
    return relay_poll_s + SCHEDULER_CALL_DEADLINE_S + REDELIVERY_DELAY_S


def after_scheduler_returns_s(relay_poll_s: float = RELAY_POLL_S) -> float:
    """After a scheduler outage ends, the conductor's next step is done once its channel
    has reconnected (at most gRPC's longest backoff) and one ordinary step later."""
    return GRPC_MAX_RECONNECT_BACKOFF_S + conductor_step_s(relay_poll_s)


def host_down_s(cfg: LoomConfig) -> float:
    """A host whose heartbeats stop is down once service_down_time has passed since the
    last one; the last one may be a heartbeat interval old when they stop."""
    return cfg.scheduler.service_down_time + cfg.agent.heartbeat_interval


async def eventually(
    check: Callable[[], Awaitable[T | None]], within: float, what: str, every: float = EVERY_S
) -> T:
    """Polls `check` until it returns something truthy and returns that; fails saying
    `what` was not reached within `within` seconds (and what `check` last returned)."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what} (last seen: {result!r})")
        await asyncio.sleep(every)


def wait_until(
    check: Callable[[], T | None], within: float, what: str, every: float = EVERY_S
) -> T:
    """`eventually` for code that is not async."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:g} s: {what} (last seen: {result!r})")
        time.sleep(every)
