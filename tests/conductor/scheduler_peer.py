"""A small real SchedulerService for the conductor's tests: in-memory hosts and claims.

It speaks the real contract over a real gRPC server, so the conductor is exercised exactly
as it talks to Loom's scheduler; placement here is simply "most free RAM first".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
from loom.common.v1 import common_pb2
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from controlplane.runtime.grpcserver import RunningServer


@dataclass
class FakeHost:
    name: str
    vcpus: int = 16
    memory_mb: int = 16384
    disk_gb: int = 500
    zone: str = "nova"
    enabled: bool = True
    reason: str = ""
    id: int = 0
    compute_endpoint: str = ""
    # Liveness, as the scheduler (its owner) reports it.
    up: bool = True
    forced_down: bool = False


@dataclass
class Claim:
    host: str
    resources: common_pb2.Resources


@dataclass
class SchedulerPeer(scheduler_pb2_grpc.SchedulerServiceServicer):
    hosts: dict[str, FakeHost] = field(default_factory=dict)
    claims: dict[str, Claim] = field(default_factory=dict)
    # (consumer, host) -> how many times a held claim was released: never more than once
    # per claim, which is what the conductor's tests check.
    releases: Counter[tuple[str, str]] = field(default_factory=Counter)
    select_calls: int = 0
    batch_calls: int = 0
    # Plays a scheduler older than SelectDestinationsBatch.
    without_batches: bool = False
    down: bool = False

    def add_host(self, name: str, **kw: Any) -> FakeHost:
        host = FakeHost(name, id=len(self.hosts) + 1, **kw)
        self.hosts[name] = host
        return host

    def _used(self, host: str) -> tuple[int, int, int]:
        mine = [c.resources for c in self.claims.values() if c.host == host]
        return (
            sum(r.vcpus for r in mine),
            sum(r.memory_mb for r in mine),
            sum(r.disk_gb for r in mine),
        )

    def _fits(self, host: FakeHost, r: common_pb2.Resources) -> bool:
        v, m, d = self._used(host.name)
        return (
            v + r.vcpus <= host.vcpus
            and m + r.memory_mb <= host.memory_mb
            and d + r.disk_gb <= host.disk_gb
        )

    async def _abort_if_down(self, context: grpc.aio.ServicerContext) -> None:
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler is down (test)")

    async def SelectDestinations(
        self, request: scheduler_pb2.SelectDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SelectDestinationsResponse:
        await self._abort_if_down(context)
        return self._select(request)

    async def SelectDestinationsBatch(
        self,
        request: scheduler_pb2.SelectDestinationsBatchRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.SelectDestinationsBatchResponse:
        await self._abort_if_down(context)
        if self.without_batches:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        self.batch_calls += 1
        return scheduler_pb2.SelectDestinationsBatchResponse(
            results=[
                scheduler_pb2.SelectDestinationsResult(response=self._select(r))
                if r.consumer_id
                else scheduler_pb2.SelectDestinationsResult(invalid_argument="consumer_id: empty")
                for r in request.requests
            ]
        )

    def _select(
        self, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResponse:
        self.select_calls += 1
        held = self.claims.get(request.consumer_id)
        if held is not None:
            return scheduler_pb2.SelectDestinationsResponse(
                placement=scheduler_pb2.Placement(
                    selected=scheduler_pb2.Destination(host=held.host, node=held.host, claimed=True)
                )
            )
        candidates = list(self.hosts.values())
        rejections: list[scheduler_pb2.FilterRejection] = []
        stages = (
            (
                "enabled",
                lambda h: (
                    h.enabled
                    and h.name not in request.ignore_hosts
                    and (not request.force_host or h.name == request.force_host)
                ),
            ),
            (
                "availability_zone",
                lambda h: not request.availability_zone or h.zone == request.availability_zone,
            ),
            ("capacity", lambda h: self._fits(h, request.resources)),
        )
        for name, keep in stages:
            kept = [h for h in candidates if keep(h)]
            removed = len(candidates) - len(kept)
            rejections.append(
                scheduler_pb2.FilterRejection(
                    filter=name,
                    hosts_removed=removed,
                    reasons={f"rejected by {name}": removed} if removed else {},
                )
            )
            candidates = kept
        if not candidates:
            return scheduler_pb2.SelectDestinationsResponse(
                no_valid_host=scheduler_pb2.NoValidHost(
                    hosts_considered=len(self.hosts),
                    rejections=rejections,
                    message="no host fits",
                )
            )
        candidates.sort(key=lambda h: (-(h.memory_mb - self._used(h.name)[1]), h.name))
        chosen, rest = candidates[0], candidates[1 : 1 + request.num_alternates]
        self.claims[request.consumer_id] = Claim(chosen.name, request.resources)
        return scheduler_pb2.SelectDestinationsResponse(
            placement=scheduler_pb2.Placement(
                selected=scheduler_pb2.Destination(
                    host=chosen.name, node=chosen.name, claimed=True
                ),
                alternates=[scheduler_pb2.Destination(host=h.name, node=h.name) for h in rest],
            )
        )

    async def ClaimResources(
        self, request: scheduler_pb2.ClaimResourcesRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClaimResourcesResponse:
        await self._abort_if_down(context)
        held = self.claims.get(request.consumer_id)
        if held is not None:
            return scheduler_pb2.ClaimResourcesResponse(claimed=held.host == request.host)
        host = self.hosts.get(request.host)
        if host is None or not host.enabled or not self._fits(host, request.resources):
            return scheduler_pb2.ClaimResourcesResponse(claimed=False, reason="does not fit")
        self.claims[request.consumer_id] = Claim(host.name, request.resources)
        return scheduler_pb2.ClaimResourcesResponse(claimed=True)

    async def ReleaseResources(
        self, request: scheduler_pb2.ReleaseResourcesRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseResourcesResponse:
        await self._abort_if_down(context)
        held = self.claims.get(request.consumer_id)
        if held is None or (request.host and held.host != request.host):
            return scheduler_pb2.ReleaseResourcesResponse(released=False)
        del self.claims[request.consumer_id]
        self.releases[(request.consumer_id, held.host)] += 1
        return scheduler_pb2.ReleaseResourcesResponse(released=True)

    def _host_pb(self, h: FakeHost) -> scheduler_pb2.Host:
        v, m, d = self._used(h.name)
        return scheduler_pb2.Host(
            name=h.name,
            uuid=f"00000000-0000-0000-0000-{h.id:012d}",
            id=h.id,
            availability_zone=h.zone,
            enabled=h.enabled,
            disabled_reason=h.reason,
            up=h.up and not h.forced_down,
            forced_down=h.forced_down,
            vcpu=scheduler_pb2.ResourceUsage(total=h.vcpus, used=v, free=h.vcpus - v),
            memory_mb=scheduler_pb2.ResourceUsage(total=h.memory_mb, used=m),
            disk_gb=scheduler_pb2.ResourceUsage(total=h.disk_gb, used=d),
            allocation_count=sum(1 for c in self.claims.values() if c.host == h.name),
            hypervisor_type="test",
            compute_endpoint=h.compute_endpoint,
        )

    async def ListHosts(
        self, request: scheduler_pb2.ListHostsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListHostsResponse:
        await self._abort_if_down(context)
        return scheduler_pb2.ListHostsResponse(
            hosts=[
                self._host_pb(h)
                for h in sorted(self.hosts.values(), key=lambda h: h.name)
                if request.name_contains in h.name
            ]
        )

    async def GetHost(
        self, request: scheduler_pb2.GetHostRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetHostResponse:
        host = self.hosts.get(request.name)
        if host is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such host")
        return scheduler_pb2.GetHostResponse(host=self._host_pb(host))

    async def SetHostEnabled(
        self, request: scheduler_pb2.SetHostEnabledRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SetHostEnabledResponse:
        host = self.hosts.get(request.host)
        if host is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such host")
        host.enabled, host.reason = request.enabled, request.reason
        return scheduler_pb2.SetHostEnabledResponse(host=self._host_pb(host))

    async def SetHostForcedDown(
        self, request: scheduler_pb2.SetHostForcedDownRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SetHostForcedDownResponse:
        host = self.hosts.get(request.host)
        if host is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such host")
        host.forced_down = request.forced_down
        return scheduler_pb2.SetHostForcedDownResponse(host=self._host_pb(host))

    async def ListAvailabilityZones(
        self,
        request: scheduler_pb2.ListAvailabilityZonesRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.ListAvailabilityZonesResponse:
        zones: dict[str, list[str]] = {}
        for h in self.hosts.values():
            zones.setdefault(h.zone, []).append(h.name)
        return scheduler_pb2.ListAvailabilityZonesResponse(
            zones=[
                scheduler_pb2.AvailabilityZone(name=z, available=True, hosts=sorted(hs))
                for z, hs in sorted(zones.items())
            ]
        )


async def start_scheduler_peer(peer: SchedulerPeer) -> RunningServer:
    from controlplane.runtime.grpcserver import Registration, start_grpc_server

    return await start_grpc_server(
        "127.0.0.1:0",
        [
            Registration(
                peer,
                scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
                "loom.scheduler.v1.SchedulerService",
            )
        ],
    )
