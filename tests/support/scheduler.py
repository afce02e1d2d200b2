"""Loom's real scheduler for tests of its callers (the conductor above all).

`running_scheduler()` serves the real `SchedulerServicer` (placement, host cache, store) over
real gRPC on the test's own PostgreSQL database, so a caller is exercised against the same
claims, filters and NoValidHost answers it meets in production. What a test needs to see or
do around it goes through the scheduler's own API and tables:

- hosts join by `ReportInventory` and are marked up with a heartbeat, as an agent's would;
- `claims()` and `host()` read the scheduler's tables;
- `calls` counts the RPCs the scheduler answered (a thin recording subclass of the real
  servicer: every answer still comes from the real code);
- `stop()` / `start()` take the gRPC server away and bring it back on the same port: a real
  outage, seen by the caller's channel as UNAVAILABLE.

The one stand-in left is `older=True`: the same real servicer served without
`SelectDestinationsBatch`, as a scheduler that predates it is. gRPC itself then answers
UNIMPLEMENTED. `tests/conductor/test_scheduler_contract.py` runs the same cases against both.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import grpc
from loom.scheduler.v1 import scheduler_pb2 as pb
from loom.scheduler.v1 import scheduler_pb2_grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.config import SchedulerConfig
from controlplane.db.engine import make_engine
from controlplane.db.models import Allocation, ResourceProvider
from controlplane.runtime.grpcserver import Registration, RunningServer, start_grpc_server
from controlplane.scheduler import convert
from controlplane.scheduler.hostcache import HostCache
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.pipeline import build_pipeline
from controlplane.scheduler.placement import PlacementService
from controlplane.scheduler.service import SERVICE_NAME
from controlplane.scheduler.servicer import SchedulerServicer
from controlplane.scheduler.store import ProviderStore, utcnow

# The RPC a scheduler older than batched decisions does not have.
BATCH_METHOD = "SelectDestinationsBatch"


class RecordingServicer(SchedulerServicer):
    """The real servicer, counting the placement RPCs it answers and the releases that
    freed a claim (per consumer and host), so a test can say "asked once", "released once"."""

    def __init__(self, placement: PlacementService, cfg: SchedulerConfig) -> None:
        super().__init__(placement, cfg)
        self.calls: Counter[str] = Counter()
        # Placement decisions asked for, alone or in batches.
        self.decisions = 0
        self.releases: Counter[tuple[str, str]] = Counter()

    async def SelectDestinations(
        self, request: pb.SelectDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SelectDestinationsResponse:
        self.calls["SelectDestinations"] += 1
        self.decisions += 1
        return await super().SelectDestinations(request, context)

    async def SelectDestinationsBatch(
        self, request: pb.SelectDestinationsBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SelectDestinationsBatchResponse:
        self.calls[BATCH_METHOD] += 1
        self.decisions += len(request.requests)
        return await super().SelectDestinationsBatch(request, context)

    async def ClaimResources(
        self, request: pb.ClaimResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ClaimResourcesResponse:
        self.calls["ClaimResources"] += 1
        return await super().ClaimResources(request, context)

    async def ListHosts(
        self, request: pb.ListHostsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListHostsResponse:
        self.calls["ListHosts"] += 1
        return await super().ListHosts(request, context)

    async def GetHost(
        self, request: pb.GetHostRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetHostResponse:
        self.calls["GetHost"] += 1
        return await super().GetHost(request, context)

    async def ReleaseResources(
        self, request: pb.ReleaseResourcesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResourcesResponse:
        self.calls["ReleaseResources"] += 1
        # Which host held it, read before the release removes the allocation.
        held = await self.placement.allocations_of(request.consumer_id)
        resp = await super().ReleaseResources(request, context)
        if resp.released:
            for record in held:
                self.releases[(request.consumer_id, record.host)] += 1
        return resp


class _Capture:
    """Receives what the generated add_*_to_server function registers, so a method can be
    left out before the handlers reach the real server."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.service, self.handlers = service, dict(handlers)


def _add_without(method: str) -> Callable[[Any, grpc.aio.Server], None]:
    def add(servicer: Any, server: grpc.aio.Server) -> None:
        captured = _Capture()
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(servicer, captured)
        del captured.handlers[method]
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(captured.service, captured.handlers),)
        )
        server.add_registered_method_handlers(captured.service, captured.handlers)

    return add


@dataclass
class SchedulerClock:
    """The scheduler's clock (HostCache takes one): the real time, plus how far a test
    moved it on to let heartbeats grow old."""

    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset


@dataclass
class SchedulerUnderTest:
    """A running real scheduler and what a test may ask of it."""

    engine: AsyncEngine
    cfg: SchedulerConfig
    servicer: RecordingServicer
    older: bool
    clock: SchedulerClock
    port: int = 0
    _server: RunningServer | None = field(default=None, repr=False)

    @property
    def placement(self) -> PlacementService:
        return self.servicer.placement

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def calls(self) -> Counter[str]:
        return self.servicer.calls

    @property
    def decisions(self) -> int:
        return self.servicer.decisions

    @property
    def releases(self) -> Counter[tuple[str, str]]:
        return self.servicer.releases

    async def start(self) -> None:
        """Serves (again) on the same port once it has one."""
        add = (
            _add_without(BATCH_METHOD)
            if self.older
            else scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server
        )
        self._server = await start_grpc_server(
            self.target, [Registration(self.servicer, add, SERVICE_NAME)]
        )
        self.port = self._server.port

    async def stop(self) -> None:
        """Takes the gRPC server away: callers' calls fail with UNAVAILABLE until start()."""
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def add_host(
        self,
        name: str,
        *,
        vcpus: int = 16,
        memory_mb: int = 16384,
        disk_gb: int = 500,
        zone: str = "",
        compute_endpoint: str = "",
        up: bool = True,
        forced_down: bool = False,
    ) -> HostState:
        """A host that joined as an agent's would (inventory at ratio 1.0, nothing
        reserved) and, unless `up` is False, is up (a heartbeat just arrived);
        `forced_down` forces it down as an operator would."""
        report = await self.placement.report_inventory(
            convert.inventory_from_request(
                pb.ReportInventoryRequest(
                    host=name,
                    vcpu=pb.ResourceUsage(total=vcpus, allocation_ratio=1.0),
                    memory_mb=pb.ResourceUsage(total=memory_mb, allocation_ratio=1.0),
                    disk_gb=pb.ResourceUsage(total=disk_gb, allocation_ratio=1.0),
                    compute_endpoint=compute_endpoint,
                    hypervisor_type="test",
                ),
                self.cfg,
            )
        )
        assert report is not None, f"inventory of {name} refused"
        if zone:
            report = await self.placement.set_availability_zone(name, zone)
            assert report is not None
        if up:
            self.placement.cache.record_heartbeat(name)
        if forced_down:
            report = await self.placement.set_forced_down(name, True)
            assert report is not None
        return report

    def heartbeat(self, name: str) -> None:
        """A heartbeat from the host's agent arrives now."""
        self.placement.cache.record_heartbeat(name)

    def stop_heartbeats(self, *names: str) -> None:
        """The named hosts' heartbeats stop: the scheduler's clock moves on past
        service_down_time, and every other host that was up beats again, so only the
        named ones are down."""
        cache = self.placement.cache
        alive = [
            h.name for h in cache.snapshot() if h.name not in names and self.placement.is_up(h)
        ]
        self.clock.offset += timedelta(seconds=self.cfg.service_down_time + 1)
        for name in alive:
            cache.record_heartbeat(name)

    async def host(self, name: str) -> HostState | None:
        """The host as the scheduler's database holds it now."""
        return await self.placement.get_host(name)

    async def set_enabled(self, name: str, enabled: bool, reason: str = "") -> None:
        await self.placement.set_enabled(name, enabled, reason)

    async def claims(self) -> dict[str, str]:
        """Every allocation the scheduler holds: consumer → host."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                select(Allocation.consumer_id, ResourceProvider.name).join(
                    ResourceProvider, ResourceProvider.id == Allocation.provider_id
                )
            )
            return {consumer: host for consumer, host in rows}


@contextlib.asynccontextmanager
async def running_scheduler(
    url: str, cfg: SchedulerConfig | None = None, *, older: bool = False
) -> AsyncIterator[SchedulerUnderTest]:
    """The real scheduler on the database at `url`, served on a free port until the block
    ends; `older` serves it without SelectDestinationsBatch."""
    cfg = cfg or SchedulerConfig()
    engine = make_engine(url)
    store = ProviderStore(engine)
    clock = SchedulerClock()
    placement = PlacementService(store, HostCache(store, clock), build_pipeline(cfg), cfg)
    sched = SchedulerUnderTest(engine, cfg, RecordingServicer(placement, cfg), older, clock)
    try:
        await sched.start()
        yield sched
    finally:
        await sched.stop()
        await store.close()
        await engine.dispose()
