"""loom.conductor.v1.MigrationsService: server moves (moves.py) and their records."""

from __future__ import annotations

from datetime import UTC
from typing import TypeAlias

import grpc
from loom.conductor.v1 import migrations_pb2, migrations_pb2_grpc
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.conductor import evacuate, moves
from controlplane.conductor.context import Conductor
from controlplane.conductor.convert import ts
from controlplane.conductor.servers.query import load_instance
from controlplane.db.models import Flavor, Instance, Migration
from controlplane.runtime.errors import InvalidArgument, NotFound
from controlplane.runtime.rpc import grpc_errors

Ctx: TypeAlias = grpc.aio.ServicerContext


def migration_pb(
    m: Migration, flavor_ids: dict[str, int] | None = None
) -> migrations_pb2.Migration:
    ids = flavor_ids or {}
    return migrations_pb2.Migration(
        old_instance_type_id=ids.get(str(m.old_flavor.get("flavor_id", "")), 0),
        new_instance_type_id=ids.get(str(m.new_flavor.get("flavor_id", "")), 0),
        id=m.id,
        uuid=m.uuid,
        instance_uuid=m.instance_uuid,
        source_compute=m.source_compute,
        source_node=m.source_node,
        dest_compute=m.dest_compute or "",
        dest_node=m.dest_node or "",
        dest_host=m.dest_host or "",
        old_flavor_id=str(m.old_flavor.get("flavor_id", "")),
        new_flavor_id=str(m.new_flavor.get("flavor_id", "")),
        status=m.status,
        migration_type=m.migration_type,
        created_at=ts(m.created_at),
        updated_at=ts(m.updated_at),
        user_id=m.user_id,
        project_id=m.project_id,
    )


def _filtered(request: migrations_pb2.ListMigrationsRequest) -> Select[Migration]:
    stmt = select(Migration)
    if request.project_id:
        stmt = stmt.where(Migration.project_id == request.project_id)
    if request.instance_uuid:
        stmt = stmt.where(Migration.instance_uuid == request.instance_uuid)
    if request.host:
        stmt = stmt.where(
            or_(Migration.source_compute == request.host, Migration.dest_compute == request.host)
        )
    if request.status:
        stmt = stmt.where(Migration.status == request.status)
    if request.migration_type:
        stmt = stmt.where(Migration.migration_type == request.migration_type)
    if request.source_compute:
        stmt = stmt.where(Migration.source_compute == request.source_compute)
    if request.user_id:
        stmt = stmt.where(Migration.user_id == request.user_id)
    if request.HasField("changes_since"):
        stmt = stmt.where(
            Migration.updated_at >= request.changes_since.ToDatetime().replace(tzinfo=UTC)
        )
    if request.HasField("changes_before"):
        stmt = stmt.where(
            Migration.updated_at <= request.changes_before.ToDatetime().replace(tzinfo=UTC)
        )
    if request.in_progress:
        stmt = stmt.where(Migration.status.not_in(sorted(moves.DONE | {moves.FAILED})))
    return stmt


async def _flavor_ids(session: AsyncSession, rows: list[Migration]) -> dict[str, int]:
    """The integer ids of the flavors the migrations name (one SELECT)."""
    wanted = {str(f.get("flavor_id", "")) for m in rows for f in (m.old_flavor, m.new_flavor)} - {
        ""
    }
    if not wanted:
        return {}
    found = await session.execute(
        select(Flavor.flavorid, Flavor.id).where(Flavor.flavorid.in_(sorted(wanted)))
    )
    return {str(fid): int(i) for fid, i in found.all()}


class MigrationsServicer(migrations_pb2_grpc.MigrationsServiceServicer):
    def __init__(self, conductor: Conductor) -> None:
        self._c = conductor

    @grpc_errors
    async def ResizeServer(
        self, request: migrations_pb2.ResizeServerRequest, context: Ctx
    ) -> migrations_pb2.ResizeServerResponse:
        if not request.flavor_id:
            raise InvalidArgument("flavor_id is required")
        mig = await moves.start_move(
            self._c,
            instance_uuid=request.id,
            project_id=request.project_id,
            user_id=request.user_id,
            request_id=request.request_id,
            migration_type=moves.RESIZE,
            flavor_id=request.flavor_id,
            override_lock=request.override_lock,
        )
        return migrations_pb2.ResizeServerResponse(migration=migration_pb(mig))

    @grpc_errors
    async def MigrateServer(
        self, request: migrations_pb2.MigrateServerRequest, context: Ctx
    ) -> migrations_pb2.MigrateServerResponse:
        mig = await moves.start_move(
            self._c,
            instance_uuid=request.id,
            project_id=request.project_id,
            user_id=request.user_id,
            request_id=request.request_id,
            migration_type=moves.MIGRATION,
            host=request.host,
            override_lock=request.override_lock,
        )
        return migrations_pb2.MigrateServerResponse(migration=migration_pb(mig))

    @grpc_errors
    async def ConfirmResize(
        self, request: migrations_pb2.ConfirmResizeRequest, context: Ctx
    ) -> migrations_pb2.ConfirmResizeResponse:
        await moves.confirm_resize(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return migrations_pb2.ConfirmResizeResponse()

    @grpc_errors
    async def RevertResize(
        self, request: migrations_pb2.RevertResizeRequest, context: Ctx
    ) -> migrations_pb2.RevertResizeResponse:
        await moves.revert_resize(
            self._c,
            request.id,
            request.project_id,
            request.user_id,
            request.request_id,
            override_lock=request.override_lock,
        )
        return migrations_pb2.RevertResizeResponse()

    @grpc_errors
    async def ListMigrations(
        self, request: migrations_pb2.ListMigrationsRequest, context: Ctx
    ) -> migrations_pb2.ListMigrationsResponse:
        async with self._c.sessions() as session:
            if request.instance_uuid and request.project_id:
                await load_instance(session, request.instance_uuid, request.project_id)
            stmt = _filtered(request)
            if request.marker:
                marker = (
                    await session.execute(
                        select(Migration.id).where(Migration.uuid == request.marker)
                    )
                ).scalar_one_or_none()
                if marker is None:
                    raise NotFound(f"Marker {request.marker[:64]} could not be found.")
                stmt = stmt.where(Migration.id < marker)
            stmt = stmt.order_by(Migration.id.desc())
            limit = request.limit or self._c.cfg.conductor.max_limit
            stmt = stmt.limit(min(limit, self._c.cfg.conductor.max_limit))
            rows = list((await session.execute(stmt)).scalars())
            ids = await _flavor_ids(session, rows)
        return migrations_pb2.ListMigrationsResponse(
            migrations=[migration_pb(m, ids) for m in rows]
        )

    @grpc_errors
    async def GetMigration(
        self, request: migrations_pb2.GetMigrationRequest, context: Ctx
    ) -> migrations_pb2.GetMigrationResponse:
        async with self._c.sessions() as session:
            stmt = select(Migration).where(Migration.id == request.id)
            if request.instance_uuid:
                stmt = stmt.where(Migration.instance_uuid == request.instance_uuid)
            if request.project_id:
                stmt = stmt.join(Instance, Instance.uuid == Migration.instance_uuid).where(
                    Instance.project_id == request.project_id
                )
            row = (await session.execute(stmt)).scalar_one_or_none()
            if row is None:
                raise NotFound(f"Migration {request.id} could not be found.")
            ids = await _flavor_ids(session, [row])
        return migrations_pb2.GetMigrationResponse(migration=migration_pb(row, ids))

    @grpc_errors
    async def LiveMigrateServer(
        self, request: migrations_pb2.LiveMigrateServerRequest, context: Ctx
    ) -> migrations_pb2.LiveMigrateServerResponse:
        mig = await moves.start_move(
            self._c,
            instance_uuid=request.id,
            project_id=request.project_id,
            user_id=request.user_id,
            request_id=request.request_id,
            migration_type=moves.LIVE,
            host=request.host,
            override_lock=request.override_lock,
        )
        return migrations_pb2.LiveMigrateServerResponse(migration=migration_pb(mig))

    @grpc_errors
    async def EvacuateServer(
        self, request: migrations_pb2.EvacuateServerRequest, context: Ctx
    ) -> migrations_pb2.EvacuateServerResponse:
        mig = await evacuate.evacuate_server(
            self._c,
            instance_uuid=request.id,
            project_id=request.project_id,
            user_id=request.user_id,
            request_id=request.request_id,
            host=request.host,
            force=request.force,
            stop_at_destination=request.stop_at_destination,
        )
        return migrations_pb2.EvacuateServerResponse(migration=migration_pb(mig))
