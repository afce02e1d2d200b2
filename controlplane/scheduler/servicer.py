"""gRPC SchedulerService: validates, converts, delegates to placement, converts back.

Bad input ends the call with INVALID_ARGUMENT and a message naming the field; an unknown
host with NOT_FOUND. Placement failures are answers, not errors: NoValidHost travels in
the SelectDestinations response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from loom.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from controlplane.config import SchedulerConfig
from controlplane.runtime.rpc import grpc_errors
from controlplane.scheduler import convert
from controlplane.scheduler.convert import InvalidInput
from controlplane.scheduler.hoststate import HostState
from controlplane.scheduler.placement import Placed, PlacementService
from controlplane.scheduler.store import MoveStatus

log = logging.getLogger(__name__)

# Decisions per SelectDestinationsBatch call.
MAX_BATCH = 1000

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _invalid_input_is_invalid_argument(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await fn(self, request, context)
        except InvalidInput as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise  # abort raises; this line only satisfies the type checker

    return wrapper


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self, placement: PlacementService, cfg: SchedulerConfig) -> None:
        self.placement = placement
        self.cfg = cfg

    def _host_pb(self, host: HostState) -> scheduler_pb2.Host:
        return convert.host_to_pb(
            host, self.placement.is_up(host), self.cfg.default_availability_zone
        )

    def _zone(self, host: HostState) -> str:
        return host.zone_or(self.cfg.default_availability_zone)

    async def _not_found(self, context: grpc.aio.ServicerContext, name: str) -> None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"host {name!r} not found")

    @_invalid_input_is_invalid_argument
    async def SelectDestinations(
        self, request: scheduler_pb2.SelectDestinationsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SelectDestinationsResponse:
        return await self._select(request)

    async def SelectDestinationsBatch(
        self,
        request: scheduler_pb2.SelectDestinationsBatchRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.SelectDestinationsBatchResponse:
        if len(request.requests) > MAX_BATCH:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_BATCH} requests per batch, not {len(request.requests)}",
            )
        # Concurrent, as that many single calls would be: claims that meet in the store go
        # out together.
        results = await asyncio.gather(*(self._select_result(r) for r in request.requests))
        return scheduler_pb2.SelectDestinationsBatchResponse(results=results)

    async def _select_result(
        self, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResult:
        try:
            return scheduler_pb2.SelectDestinationsResult(response=await self._select(request))
        except InvalidInput as exc:
            return scheduler_pb2.SelectDestinationsResult(invalid_argument=str(exc))

    async def _select(
        self, request: scheduler_pb2.SelectDestinationsRequest
    ) -> scheduler_pb2.SelectDestinationsResponse:
        outcome = await self.placement.select_destinations(
            convert.placement_request(request, self.cfg)
        )
        if isinstance(outcome, Placed):
            return scheduler_pb2.SelectDestinationsResponse(
                placement=scheduler_pb2.Placement(
                    selected=convert.destination(
                        outcome.selected, True, self.cfg.default_availability_zone
                    ),
                    alternates=[
                        convert.destination(h, False, self.cfg.default_availability_zone)
                        for h in outcome.alternates
                    ],
                )
            )
        log.info(
            "no valid host",
            extra={"consumer_id": request.consumer_id, "detail": outcome.message},
        )
        return scheduler_pb2.SelectDestinationsResponse(
            no_valid_host=convert.no_valid_host(outcome.decision, outcome.message)
        )

    @_invalid_input_is_invalid_argument
    async def ClaimResources(
        self, request: scheduler_pb2.ClaimResourcesRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ClaimResourcesResponse:
        claim = await self.placement.claim_on_host(convert.claim_request(request), request.host)
        return scheduler_pb2.ClaimResourcesResponse(claimed=claim.claimed, reason=claim.reason)

    @_invalid_input_is_invalid_argument
    async def ReleaseResources(
        self, request: scheduler_pb2.ReleaseResourcesRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReleaseResourcesResponse:
        convert.require_consumer(request.consumer_id)
        released = await self.placement.release(request.consumer_id, request.host)
        return scheduler_pb2.ReleaseResourcesResponse(released=released)

    @_invalid_input_is_invalid_argument
    async def ReportInventory(
        self, request: scheduler_pb2.ReportInventoryRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ReportInventoryResponse:
        host = await self.placement.report_inventory(
            convert.inventory_from_request(request, self.cfg)
        )
        if host is None:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"inventory of {request.host!r} is below what its allocations already use",
            )
            raise AssertionError("unreachable")
        return scheduler_pb2.ReportInventoryResponse(host=self._host_pb(host))

    async def ListHosts(
        self, request: scheduler_pb2.ListHostsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListHostsResponse:
        hosts = [
            h
            for h in await self.placement.list_hosts()
            if (not request.availability_zone or self._zone(h) == request.availability_zone)
            and request.name_contains in h.name
        ]
        return scheduler_pb2.ListHostsResponse(hosts=[self._host_pb(h) for h in hosts])

    async def GetHost(
        self, request: scheduler_pb2.GetHostRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetHostResponse:
        host = await self.placement.get_host(request.name) if request.name else None
        if host is None:
            await self._not_found(context, request.name)
            raise AssertionError("unreachable")
        return scheduler_pb2.GetHostResponse(host=self._host_pb(host))

    @_invalid_input_is_invalid_argument
    async def SetHostEnabled(
        self, request: scheduler_pb2.SetHostEnabledRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SetHostEnabledResponse:
        convert.require_host(request.host)
        host = await self.placement.set_enabled(request.host, request.enabled, request.reason)
        if host is None:
            await self._not_found(context, request.host)
            raise AssertionError("unreachable")
        return scheduler_pb2.SetHostEnabledResponse(host=self._host_pb(host))

    @_invalid_input_is_invalid_argument
    async def SetHostForcedDown(
        self, request: scheduler_pb2.SetHostForcedDownRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.SetHostForcedDownResponse:
        convert.require_host(request.host)
        host = await self.placement.set_forced_down(request.host, request.forced_down)
        if host is None:
            await self._not_found(context, request.host)
            raise AssertionError("unreachable")
        return scheduler_pb2.SetHostForcedDownResponse(host=self._host_pb(host))

    @grpc_errors
    @_invalid_input_is_invalid_argument
    async def SetHostAvailabilityZone(
        self,
        request: scheduler_pb2.SetHostAvailabilityZoneRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.SetHostAvailabilityZoneResponse:
        convert.require_host(request.host)
        host = await self.placement.set_availability_zone(request.host, request.availability_zone)
        return scheduler_pb2.SetHostAvailabilityZoneResponse(host=self._host_pb(host))

    async def ListAvailabilityZones(
        self,
        request: scheduler_pb2.ListAvailabilityZonesRequest,
        context: grpc.aio.ServicerContext,
    ) -> scheduler_pb2.ListAvailabilityZonesResponse:
        zones: dict[str, list[HostState]] = {}
        for host in await self.placement.list_hosts():
            zones.setdefault(self._zone(host), []).append(host)
        return scheduler_pb2.ListAvailabilityZonesResponse(
            zones=[
                scheduler_pb2.AvailabilityZone(
                    name=name,
                    available=any(h.enabled and self.placement.is_up(h) for h in hosts),
                    hosts=[h.name for h in hosts],
                )
                for name, hosts in sorted(zones.items())
            ]
        )

    @_invalid_input_is_invalid_argument
    async def GetAllocations(
        self, request: scheduler_pb2.GetAllocationsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.GetAllocationsResponse:
        convert.require_consumer(request.consumer_id)
        records = await self.placement.allocations_of(request.consumer_id)
        return scheduler_pb2.GetAllocationsResponse(
            allocations=[
                scheduler_pb2.Allocation(
                    host=r.host, resources=convert.resources_to_pb(r.resources)
                )
                for r in records
            ]
        )

    @_invalid_input_is_invalid_argument
    async def MoveAllocations(
        self, request: scheduler_pb2.MoveAllocationsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.MoveAllocationsResponse:
        convert.require_consumer(request.source_consumer_id)
        convert.require_consumer(request.target_consumer_id)
        if request.source_consumer_id == request.target_consumer_id:
            raise InvalidInput("source_consumer_id and target_consumer_id must differ")
        result = await self.placement.move_allocation(
            request.source_consumer_id, request.target_consumer_id
        )
        if result.status is MoveStatus.TARGET_HOLDS_ANOTHER:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"consumer {request.target_consumer_id} already holds an allocation",
            )
        return scheduler_pb2.MoveAllocationsResponse(
            moved=result.status is MoveStatus.MOVED, host=result.host
        )
