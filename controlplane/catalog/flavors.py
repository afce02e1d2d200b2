"""FlavorsService: the flavor catalog (servers keep a snapshot, so deletes are safe)."""

from __future__ import annotations

from typing import Any

import grpc
from loom.catalog.v1 import flavors_pb2, flavors_pb2_grpc
from sqlalchemy import exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Flavor, FlavorProject
from controlplane.db.seeding import Seeder
from controlplane.runtime.rpc import abort, new_uuid, now

# Nova's sort keys for flavors, mapped to columns.
_SORT_KEYS = {
    "flavorid": "flavorid",
    "id": "flavorid",
    "name": "name",
    "memory_mb": "memory_mb",
    "ram": "memory_mb",
    "vcpus": "vcpus",
    "root_gb": "root_gb",
    "disk": "root_gb",
    "swap": "swap_mb",
    "ephemeral_gb": "ephemeral_gb",
    "rxtx_factor": "rxtx_factor",
    "created_at": "created_at",
}


def _usable_by(project_id: str) -> Any:
    """Public, or shared with the project."""
    return or_(
        Flavor.is_public.is_(True),
        exists().where(
            FlavorProject.flavor_id == Flavor.id, FlavorProject.project_id == project_id
        ),
    )


def flavor_pb(f: Flavor) -> flavors_pb2.Flavor:
    return flavors_pb2.Flavor(
        id=f.flavorid,
        name=f.name,
        vcpus=f.vcpus,
        memory_mb=f.memory_mb,
        root_gb=f.root_gb,
        ephemeral_gb=f.ephemeral_gb,
        swap_mb=f.swap_mb,
        rxtx_factor=f.rxtx_factor,
        is_public=f.is_public,
        disabled=f.disabled,
        description=f.description or "",
        extra_specs={str(k): str(v) for k, v in (f.extra_specs or {}).items()},
    )


class FlavorsServicer(flavors_pb2_grpc.FlavorsServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], seeder: Seeder) -> None:
        self._sessions = sessions
        self._seeder = seeder

    async def _get(
        self, s: AsyncSession, context: Any, flavor_id: str, project_id: str = ""
    ) -> Flavor:
        """The flavor; with project_id, only if it is public or shared with that project."""
        query = select(Flavor).where(Flavor.flavorid == flavor_id)
        if project_id:
            query = query.where(_usable_by(project_id))
        flavor = await s.scalar(query)
        if flavor is None:
            await abort(
                context, grpc.StatusCode.NOT_FOUND, f"Flavor {flavor_id} could not be found."
            )
        return flavor

    async def CreateFlavor(self, request: flavors_pb2.CreateFlavorRequest, context: Any) -> Any:
        await self._seeder.ensure()
        want = request.flavor
        problems = []
        if not want.name.strip():
            problems.append("name must not be empty")
        if want.vcpus < 1:
            problems.append("vcpus must be at least 1")
        if want.memory_mb < 1:
            problems.append("memory_mb must be at least 1")
        if min(want.root_gb, want.ephemeral_gb, want.swap_mb) < 0:
            problems.append("disk sizes must not be negative")
        if want.rxtx_factor < 0:
            problems.append("rxtx_factor must not be negative")
        if problems:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "; ".join(problems))
        flavor = Flavor(
            flavorid=want.id or new_uuid(),
            name=want.name,
            vcpus=want.vcpus,
            memory_mb=want.memory_mb,
            root_gb=want.root_gb,
            ephemeral_gb=want.ephemeral_gb,
            swap_mb=want.swap_mb,
            rxtx_factor=want.rxtx_factor or 1.0,
            is_public=want.is_public,
            disabled=want.disabled,
            description=want.description or None,
            extra_specs=dict(want.extra_specs),
            created_at=now(),
        )
        try:
            async with self._sessions.begin() as s:
                s.add(flavor)
        except IntegrityError:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"Flavor with name {want.name} or id {want.id} already exists.",
            )
        return flavors_pb2.CreateFlavorResponse(flavor=flavor_pb(flavor))

    async def GetFlavor(self, request: flavors_pb2.GetFlavorRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions() as s:
            return flavors_pb2.GetFlavorResponse(
                flavor=flavor_pb(await self._get(s, context, request.id, request.project_id))
            )

    async def ListFlavors(self, request: flavors_pb2.ListFlavorsRequest, context: Any) -> Any:
        await self._seeder.ensure()
        key = request.sort_key or "flavorid"
        if key not in _SORT_KEYS:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid sort_key {key}")
        direction = request.sort_dir or "asc"
        if direction not in ("asc", "desc"):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid sort_dir {direction}")
        column = getattr(Flavor, _SORT_KEYS[key])
        order = column.asc() if direction == "asc" else column.desc()
        tiebreak = Flavor.flavorid.asc() if direction == "asc" else Flavor.flavorid.desc()
        query = select(Flavor).order_by(order, tiebreak)
        if not request.include_private:
            query = query.where(
                _usable_by(request.project_id) if request.project_id else Flavor.is_public.is_(True)
            )
        if request.min_ram:
            query = query.where(Flavor.memory_mb >= request.min_ram)
        if request.min_disk:
            query = query.where(Flavor.root_gb >= request.min_disk)
        async with self._sessions() as s:
            # Flavor catalogs are small (tens of rows): a marker is resolved in memory,
            # which keeps pagination exact for every sort key.
            rows = list(await s.scalars(query))
        if request.marker:
            ids = [f.flavorid for f in rows]
            if request.marker not in ids:
                await abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"marker [{request.marker}] not found",
                )
            rows = rows[ids.index(request.marker) + 1 :]
        next_marker = ""
        if request.limit and len(rows) > request.limit:
            rows = rows[: request.limit]
            next_marker = rows[-1].flavorid
        return flavors_pb2.ListFlavorsResponse(
            flavors=[flavor_pb(f) for f in rows], next_marker=next_marker
        )

    async def DeleteFlavor(self, request: flavors_pb2.DeleteFlavorRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            await s.delete(await self._get(s, context, request.id))
        return flavors_pb2.DeleteFlavorResponse()

    async def UpdateFlavor(self, request: flavors_pb2.UpdateFlavorRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            flavor = await self._get(s, context, request.id)
            flavor.description = request.description or None
            flavor.updated_at = now()
        return flavors_pb2.UpdateFlavorResponse(flavor=flavor_pb(flavor))

    async def SetFlavorExtraSpecs(
        self, request: flavors_pb2.SetFlavorExtraSpecsRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            flavor = await self._get(s, context, request.id)
            # A new dict: JSON columns only notice reassignment, not in-place edits.
            flavor.extra_specs = {**(flavor.extra_specs or {}), **dict(request.extra_specs)}
            flavor.updated_at = now()
        return flavors_pb2.SetFlavorExtraSpecsResponse(
            extra_specs={str(k): str(v) for k, v in flavor.extra_specs.items()}
        )

    async def DeleteFlavorExtraSpec(
        self, request: flavors_pb2.DeleteFlavorExtraSpecRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            flavor = await self._get(s, context, request.id)
            specs = dict(flavor.extra_specs or {})
            if request.key not in specs:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"Flavor {request.id} has no extra specs with key {request.key}.",
                )
            del specs[request.key]
            flavor.extra_specs = specs
            flavor.updated_at = now()
        return flavors_pb2.DeleteFlavorExtraSpecResponse()

    async def _access(self, s: AsyncSession, flavor: Flavor) -> list[flavors_pb2.FlavorAccess]:
        projects = await s.scalars(
            select(FlavorProject.project_id)
            .where(FlavorProject.flavor_id == flavor.id)
            .order_by(FlavorProject.project_id)
        )
        return [flavors_pb2.FlavorAccess(flavor_id=flavor.flavorid, project_id=p) for p in projects]

    async def ListFlavorAccess(
        self, request: flavors_pb2.ListFlavorAccessRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        async with self._sessions() as s:
            flavor = await self._get(s, context, request.id)
            if flavor.is_public:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    "Access list not available for public flavors.",
                )
            return flavors_pb2.ListFlavorAccessResponse(access=await self._access(s, flavor))

    async def AddFlavorAccess(
        self, request: flavors_pb2.AddFlavorAccessRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        if not request.project_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "project_id is required")
        try:
            async with self._sessions.begin() as s:
                flavor = await self._get(s, context, request.id)
                if flavor.is_public:
                    await abort(
                        context,
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "Can not add access to a public flavor.",
                    )
                s.add(FlavorProject(flavor_id=flavor.id, project_id=request.project_id))
                await s.flush()
                access = await self._access(s, flavor)
        except IntegrityError:
            await abort(
                context,
                grpc.StatusCode.ALREADY_EXISTS,
                f"Flavor access already exists for flavor {request.id} and project "
                f"{request.project_id} combination.",
            )
        return flavors_pb2.AddFlavorAccessResponse(access=access)

    async def RemoveFlavorAccess(
        self, request: flavors_pb2.RemoveFlavorAccessRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            flavor = await self._get(s, context, request.id)
            row = await s.scalar(
                select(FlavorProject).where(
                    FlavorProject.flavor_id == flavor.id,
                    FlavorProject.project_id == request.project_id,
                )
            )
            if row is None:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"Flavor access not found for {request.id} / {request.project_id} combination.",
                )
            await s.delete(row)
            await s.flush()
            access = await self._access(s, flavor)
        return flavors_pb2.RemoveFlavorAccessResponse(access=access)
