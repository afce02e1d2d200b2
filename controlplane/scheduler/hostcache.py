"""This process's snapshot of every host, so a decision never reads the whole fleet.

The cache is refreshed from the database periodically and learns the result of each of
this process's own writes at once (the store returns the row it wrote). It is allowed to
be stale: the claim re-checks capacity in the database, and a claim that loses a race
refreshes the host it lost on.

Claims in flight: between choosing a host and hearing back from the database, a decision
holds a reservation on that host here, so the decisions that rank meanwhile (the rest of a
batch, or concurrent calls) see it as if the claim had already succeeded and spread as the
weighers say, instead of all choosing the host that was best before any of them claimed.
Every row put in the cache carries the reservations still in flight on it. The database
stays the only judge of capacity: a reservation only changes what this process ranks.

Liveness: heartbeats seen on NATS are kept in memory and written to the database in
batches; a host's known heartbeat is the later of the two, so a restarted scheduler (or
another replica) does not take live hosts for dead ones, nor long-dead ones for live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType

from controlplane.scheduler.hostorder import HostOrder
from controlplane.scheduler.hoststate import NO_RESOURCES, HostState, Resources
from controlplane.scheduler.store import ProviderStore, utcnow

Clock = Callable[[], datetime]


class HostCache:
    def __init__(self, store: ProviderStore, clock: Clock = utcnow) -> None:
        self.store = store
        self.clock = clock
        self._hosts: dict[str, HostState] = {}
        self._hosts_view: Mapping[str, HostState] = MappingProxyType(self._hosts)
        self._snapshot: tuple[HostState, ...] | None = ()
        self._orders: list[HostOrder] = []
        self._heartbeats: dict[str, datetime] = {}
        self._unwritten_heartbeats: dict[str, datetime] = {}
        # Host name -> (resources, number of claims) sent and not yet answered.
        self._in_flight: dict[str, tuple[Resources, int]] = {}
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = float("-inf")

    # ------------------------------------------------------------------ reading

    def snapshot(self) -> tuple[HostState, ...]:
        """Every known host, as of the last refresh or own write (rebuilt only on change)."""
        if self._snapshot is None:
            self._snapshot = tuple(self._hosts.values())
        return self._snapshot

    def get(self, name: str) -> HostState | None:
        return self._hosts.get(name)

    @property
    def hosts(self) -> Mapping[str, HostState]:
        """Every known host by name: a read-only live view, updated in place.

        A decision that reads it without awaiting sees one consistent state: this process
        changes it only between awaits.
        """
        return self._hosts_view

    def keep_ordered(self, order: HostOrder) -> None:
        """Keeps `order` holding every host this cache holds, from now on."""
        for host in self._hosts.values():
            order.put(host)
        self._orders.append(order)

    @property
    def age(self) -> float:
        """Seconds since the last full refresh."""
        return time.monotonic() - self._refreshed_at

    # ------------------------------------------------------------------ updating

    def put(self, host: HostState) -> HostState:
        """Takes `host` unless the cache already holds a newer generation of it.

        Returns what the cache now holds, with the latest heartbeat this process knows.
        """
        current = self._hosts.get(host.name)
        if current is not None and current.generation > host.generation:
            host = current.with_heartbeat(host.last_heartbeat_at)
        else:
            held, claims = self._in_flight.get(host.name, (NO_RESOURCES, 0))
            host = host.with_usage(held, claims)
        host = host.with_heartbeat(self._heartbeats.get(host.name))
        if current is not host:
            self._replace(host)
        return host

    def reserve(self, name: str, wanted: Resources) -> None:
        """Counts a claim of `wanted` on host `name` as made until `unreserve` is called."""
        held, claims = self._in_flight.get(name, (NO_RESOURCES, 0))
        self._in_flight[name] = (held.plus(wanted), claims + 1)
        current = self._hosts.get(name)
        if current is not None:
            self._replace(current.with_usage(wanted, 1))

    def unreserve(self, name: str, wanted: Resources) -> None:
        """Takes back a `reserve`: the claim was answered (or failed)."""
        held, claims = self._in_flight[name]
        if claims == 1:
            del self._in_flight[name]
        else:
            self._in_flight[name] = (held.plus(wanted, -1), claims - 1)
        current = self._hosts.get(name)
        if current is not None:
            self._replace(current.with_usage(NO_RESOURCES.plus(wanted, -1), -1))

    def _replace(self, host: HostState) -> None:
        self._hosts[host.name] = host
        self._snapshot = None
        for order in self._orders:
            order.put(host)

    async def refresh_all(self) -> None:
        """Reloads every host from the database."""
        async with self._refresh_lock:
            await self._refresh_all_locked()

    async def refresh_if_older(self, max_age: float) -> bool:
        """Reloads every host unless a refresh finished less than `max_age` seconds ago.

        Concurrent callers share one reload. Returns True when the cache is now fresh.
        """
        async with self._refresh_lock:
            if self.age < max_age:
                return False
            await self._refresh_all_locked()
            return True

    async def _refresh_all_locked(self) -> None:
        started = time.monotonic()
        # Only rows that changed become new snapshots: at 10,000 hosts most have not.
        for host in await self.store.load_hosts(known=self._holds):
            self.put(host)
        self._refreshed_at = started

    def _holds(self, name: str, generation: int, last_heartbeat_at: datetime | None) -> bool:
        """True when a stored row would change nothing in the cache's copy of the host."""
        current = self._hosts.get(name)
        if current is None or current.generation != generation:
            return False
        if last_heartbeat_at is None:
            return True
        return (
            current.last_heartbeat_at is not None and current.last_heartbeat_at >= last_heartbeat_at
        )

    async def refresh_host(self, name: str) -> HostState | None:
        """Reloads one host; None when it does not exist."""
        host = await self.store.load_host(name)
        return self.put(host) if host is not None else None

    # ------------------------------------------------------------------ liveness

    def record_heartbeat(self, host: str, at: datetime | None = None) -> None:
        """Notes that `host` beat at `at` (now by default); written later, in a batch."""
        at = at or self.clock()
        known = self._heartbeats.get(host)
        if known is not None and known >= at:
            return
        self._heartbeats[host] = at
        self._unwritten_heartbeats[host] = at
        current = self._hosts.get(host)
        if current is not None:
            self._replace(current.with_heartbeat(at))

    async def flush_heartbeats(self) -> int:
        """Writes heartbeats seen since the last flush; returns how many hosts it wrote.

        A failed write keeps them for the next flush.
        """
        batch, self._unwritten_heartbeats = self._unwritten_heartbeats, {}
        try:
            await self.store.record_heartbeats(batch)
        except BaseException:
            for host, at in batch.items():
                self._unwritten_heartbeats.setdefault(host, at)
            raise
        return len(batch)
