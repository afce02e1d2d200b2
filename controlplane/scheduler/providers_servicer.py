"""gRPC ResourceProvidersService: the Placement API's reads of the scheduler's own tables
(resource providers, their aggregates, allocations). Read-only; every answer is one or two
SELECTs straight from the database, so it shows what claims have committed, not a cache."""

from __future__ import annotations

from typing import Any, TypeAlias, cast

import grpc
from loom.common.v1 import common_pb2
from loom.scheduler.v1 import providers_pb2, providers_pb2_grpc
from sqlalchemy import Table, select
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.db.models import Aggregate, AggregateHost
from controlplane.runtime.errors import InvalidArgument
from controlplane.runtime.rpc import grpc_errors
from controlplane.scheduler.store import ALLOC, RP

Ctx: TypeAlias = grpc.aio.ServicerContext

AGG = cast(Table, Aggregate.__table__)
AGG_HOST = cast(Table, AggregateHost.__table__)

# Placement's standard resource classes, and the column prefix of each.
RESOURCE_CLASSES = (("VCPU", "vcpu"), ("MEMORY_MB", "memory_mb"), ("DISK_GB", "disk_gb"))


def _inventories(row: Any) -> list[providers_pb2.ProviderInventory]:
    m = row._mapping
    return [
        providers_pb2.ProviderInventory(
            resource_class=rc,
            total=int(m[f"{p}_total"]),
            reserved=int(m[f"{p}_reserved"]),
            allocation_ratio=float(m[f"{p}_ratio"]),
            used=int(m[f"{p}_used"]),
        )
        for rc, p in RESOURCE_CLASSES
        # A host that has not reported its inventory has none of that class.
        if int(m[f"{p}_total"]) > 0
    ]


class ResourceProvidersServicer(providers_pb2_grpc.ResourceProvidersServiceServicer):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @grpc_errors
    async def ListResourceProviders(
        self, request: providers_pb2.ListResourceProvidersRequest, context: Ctx
    ) -> providers_pb2.ListResourceProvidersResponse:
        stmt = select(RP).order_by(RP.c.name)
        if request.uuid:
            stmt = stmt.where(RP.c.uuid == request.uuid)
        if request.name:
            stmt = stmt.where(RP.c.name == request.name)
        if request.member_of:
            stmt = stmt.where(
                RP.c.id.in_(
                    select(AGG_HOST.c.provider_id)
                    .join(AGG, AGG.c.id == AGG_HOST.c.aggregate_id)
                    .where(AGG.c.uuid == request.member_of)
                )
            )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            ids = [r.id for r in rows]
            members: dict[int, list[str]] = {i: [] for i in ids}
            if ids:
                agg_rows = await conn.execute(
                    select(AGG_HOST.c.provider_id, AGG.c.uuid)
                    .join(AGG, AGG.c.id == AGG_HOST.c.aggregate_id)
                    .where(AGG_HOST.c.provider_id.in_(ids))
                    .order_by(AGG.c.uuid)
                )
                for provider_id, agg_uuid in agg_rows:
                    members[provider_id].append(agg_uuid)
        return providers_pb2.ListResourceProvidersResponse(
            providers=[
                providers_pb2.ResourceProvider(
                    uuid=r.uuid,
                    name=r.name,
                    generation=int(r.generation or 0),
                    inventories=_inventories(r),
                    aggregate_uuids=members[r.id],
                )
                for r in rows
            ]
        )

    @grpc_errors
    async def ListConsumerAllocations(
        self, request: providers_pb2.ListConsumerAllocationsRequest, context: Ctx
    ) -> providers_pb2.ListConsumerAllocationsResponse:
        if not (request.provider_uuid or request.consumer_id or request.project_id):
            raise InvalidArgument("name a provider_uuid, a consumer_id or a project_id")
        stmt = (
            select(
                ALLOC.c.consumer_id,
                ALLOC.c.project_id,
                ALLOC.c.vcpus,
                ALLOC.c.memory_mb,
                ALLOC.c.disk_gb,
                RP.c.uuid,
                RP.c.generation,
            )
            .join(RP, RP.c.id == ALLOC.c.provider_id)
            .order_by(ALLOC.c.consumer_id, RP.c.uuid)
        )
        if request.provider_uuid:
            stmt = stmt.where(RP.c.uuid == request.provider_uuid)
        if request.consumer_id:
            stmt = stmt.where(ALLOC.c.consumer_id == request.consumer_id)
        if request.project_id:
            stmt = stmt.where(ALLOC.c.project_id == request.project_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return providers_pb2.ListConsumerAllocationsResponse(
            allocations=[
                providers_pb2.ConsumerAllocation(
                    consumer_id=r.consumer_id,
                    provider_uuid=r.uuid,
                    provider_generation=int(r.generation or 0),
                    project_id=r.project_id or "",
                    resources=common_pb2.Resources(
                        vcpus=r.vcpus, memory_mb=r.memory_mb, disk_gb=r.disk_gb
                    ),
                )
                for r in rows
            ]
        )
