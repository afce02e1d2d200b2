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
from controlplane.config import AgentConfig, LoomConfig
from controlplane.runtime.grpcserver import MAX_RECONNECT_BACKOFF_S
from controlplane.scheduler.service import (
    OWN_HEARTBEAT_INTERVAL_S,
    REFRESH_INTERVAL_S,
    heartbeat_flush_interval,
)

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
# The relay's backoff after a failed publish grows from 0.2 s, doubling, to this at most.
RELAY_MAX_BACKOFF_S = 5.0
# How long a NATS client waits between reconnect attempts (controlplane/runtime/bus.py).
NATS_RECONNECT_WAIT_S = 0.5
# The longest reconnect backoff of Loom's channels (grpc.max_reconnect_backoff_ms), with
# gRPC's 20% jitter: how long a channel may take to notice that a server it lost is back.
GRPC_MAX_RECONNECT_BACKOFF_S = 1.2 * MAX_RECONNECT_BACKOFF_S


# A scheduler holds what agents report on NATS (inventory, heartbeats) within one refresh
# of its host cache: the same time it takes to see another replica's writes.
SCHEDULER_SEES_S = REFRESH_INTERVAL_S
# A process the tests start (a Loom service on a migrated database and a running
# nats-server, PostgreSQL, nats-server) serves, or prints its ready line, within this long.
SERVICE_READY_S = 60.0
# An agent on libvirt's test:/// driver has handled and acked a command for its host, and
# published the event it implies, within one of its heartbeat intervals: the agent's own
# measure of "this host is working" (real guests take longer; their tests say how long).
AGENT_COMMAND_S = AgentConfig().heartbeat_interval
# A scheduler publishes its own heartbeat when it is ready, then every this often.
SCHEDULER_OWN_HEARTBEAT_S = OWN_HEARTBEAT_INTERVAL_S


def conductor_step_s(relay_poll_s: float = RELAY_POLL_S) -> float:
    """With every service up, one step of the conductor's path (a row relayed, an instance
    scheduled, an agent's event applied, a command on its host's subject) is done within a
    relay poll, one scheduler call deadline and one redelivery delay."""
    return relay_poll_s + SCHEDULER_CALL_DEADLINE_S + REDELIVERY_DELAY_S


def after_scheduler_returns_s(relay_poll_s: float = RELAY_POLL_S) -> float:
    """After a scheduler outage ends, the conductor's next step is done once its channel
    has reconnected (at most gRPC's longest backoff) and one ordinary step later."""
    return GRPC_MAX_RECONNECT_BACKOFF_S + conductor_step_s(relay_poll_s)


def other_replica_sees_heartbeat_s(cfg: LoomConfig) -> float:
    """A heartbeat one scheduler replica received reaches the others through the database:
    written within one heartbeat flush interval, read within one cache refresh."""
    return heartbeat_flush_interval(cfg.scheduler.service_down_time) + REFRESH_INTERVAL_S


def relay_after_nats_returns_s(publish_timeout_s: float) -> float:
    """Once a nats-server is back, a queued row is published after the client's reconnect,
    the relay's longest backoff and one publish."""
    return NATS_RECONNECT_WAIT_S + RELAY_MAX_BACKOFF_S + publish_timeout_s


def boot_s(relay_poll_s: float = RELAY_POLL_S) -> float:
    """A server created with every service up and simulated (test:///) hosts is ACTIVE
    within three conductor steps (its schedule message relayed and placed, its build
    command relayed, the agent's event applied) and one agent command."""
    return 3 * conductor_step_s(relay_poll_s) + AGENT_COMMAND_S


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
