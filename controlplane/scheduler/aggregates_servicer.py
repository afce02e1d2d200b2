"""gRPC AggregatesService: validates, delegates to the aggregate store, tells the host
cache about every row a change rewrote, converts back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

import grpc
from loom.scheduler.v1 import aggregates_pb2, aggregates_pb2_grpc

from controlplane.runtime.errors import NotFound
from controlplane.runtime.rpc import grpc_errors
from controlplane.scheduler.aggregates import AggregateChange, AggregateRecord, AggregateStore
from controlplane.scheduler.convert import timestamp
from controlplane.scheduler.placement import PlacementService

Ctx: TypeAlias = grpc.aio.ServicerContext


def aggregate_pb(agg: AggregateRecord) -> aggregates_pb2.Aggregate:
    pb = aggregates_pb2.Aggregate(
        id=agg.id,
        uuid=agg.uuid,
        name=agg.name,
        availability_zone=agg.availability_zone or "",
        hosts=list(agg.hosts),
        metadata=dict(agg.metadata),
    )
    if agg.created_at is not None:
        pb.created_at.CopyFrom(timestamp(agg.created_at))
    if agg.updated_at is not None:
        pb.updated_at.CopyFrom(timestamp(agg.updated_at))
    return pb


def _id(value: int) -> int:
    if value <= 0:
        raise NotFound(f"Aggregate {value} could not be found.")
    return value


class AggregatesServicer(aggregates_pb2_grpc.AggregatesServiceServicer):
    def __init__(self, placement: PlacementService) -> None:
        self.placement = placement

    @property
    def _store(self) -> AggregateStore:
        return self.placement.aggregates

    def _changed(self, change: AggregateChange) -> aggregates_pb2.Aggregate:
        self.placement.learn(change.hosts)
        return aggregate_pb(change.aggregate)

    @grpc_errors
    async def ListAggregates(
        self, request: aggregates_pb2.ListAggregatesRequest, context: Ctx
    ) -> aggregates_pb2.ListAggregatesResponse:
        return aggregates_pb2.ListAggregatesResponse(
            aggregates=[aggregate_pb(a) for a in await self._store.list_all()]
        )

    @grpc_errors
    async def GetAggregate(
        self, request: aggregates_pb2.GetAggregateRequest, context: Ctx
    ) -> aggregates_pb2.GetAggregateResponse:
        agg = await self._store.get(_id(request.id))
        return aggregates_pb2.GetAggregateResponse(aggregate=aggregate_pb(agg))

    @grpc_errors
    async def CreateAggregate(
        self, request: aggregates_pb2.CreateAggregateRequest, context: Ctx
    ) -> aggregates_pb2.CreateAggregateResponse:
        agg = await self._store.create(request.name, request.availability_zone)
        return aggregates_pb2.CreateAggregateResponse(aggregate=aggregate_pb(agg))

    @grpc_errors
    async def UpdateAggregate(
        self, request: aggregates_pb2.UpdateAggregateRequest, context: Ctx
    ) -> aggregates_pb2.UpdateAggregateResponse:
        change = await self._store.update(
            _id(request.id),
            name=request.name if request.HasField("name") else None,
            zone=request.availability_zone if request.HasField("availability_zone") else None,
        )
        return aggregates_pb2.UpdateAggregateResponse(aggregate=self._changed(change))

    @grpc_errors
    async def DeleteAggregate(
        self, request: aggregates_pb2.DeleteAggregateRequest, context: Ctx
    ) -> aggregates_pb2.DeleteAggregateResponse:
        await self._store.delete(_id(request.id))
        return aggregates_pb2.DeleteAggregateResponse()

    @grpc_errors
    async def AddHost(
        self, request: aggregates_pb2.AddHostRequest, context: Ctx
    ) -> aggregates_pb2.AddHostResponse:
        change = await self._store.add_host(_id(request.id), request.host)
        return aggregates_pb2.AddHostResponse(aggregate=self._changed(change))

    @grpc_errors
    async def RemoveHost(
        self, request: aggregates_pb2.RemoveHostRequest, context: Ctx
    ) -> aggregates_pb2.RemoveHostResponse:
        change = await self._store.remove_host(_id(request.id), request.host)
        return aggregates_pb2.RemoveHostResponse(aggregate=self._changed(change))

    @grpc_errors
    async def SetMetadata(
        self, request: aggregates_pb2.SetMetadataRequest, context: Ctx
    ) -> aggregates_pb2.SetMetadataResponse:
        items: Mapping[str, str] = dict(request.set)
        change = await self._store.set_metadata(_id(request.id), items, list(request.delete))
        return aggregates_pb2.SetMetadataResponse(aggregate=self._changed(change))
