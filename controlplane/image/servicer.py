"""ImagesService: image metadata. The bytes live in the gateway's image store; this
service records where they are and their hashes, and flips the status to active."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from loom.image.v1 import images_pb2, images_pb2_grpc
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from controlplane.db.models import Image
from controlplane.runtime.rpc import abort, id_for_request, new_uuid, now, timestamp

VISIBILITIES = ("public", "private", "shared", "community")
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
_SORT_KEYS = ("created_at", "updated_at", "name", "size", "status", "id", "disk_format")


def image_pb(i: Image) -> images_pb2.Image:
    return images_pb2.Image(
        id=i.id,
        name=i.name or "",
        status=i.status,
        disk_format=i.disk_format or "",
        container_format=i.container_format or "",
        size=i.size or 0,
        checksum=i.checksum or "",
        os_hash_algo=i.os_hash_algo or "",
        os_hash_value=i.os_hash_value or "",
        min_disk=i.min_disk,
        min_ram=i.min_ram,
        visibility=i.visibility,
        protected=i.protected,
        owner=i.owner or "",
        properties={str(k): str(v) for k, v in (i.properties or {}).items()},
        created_at=timestamp(i.created_at),
        updated_at=timestamp(i.updated_at or i.created_at),
        tags=[str(t) for t in (i.tags or [])],
        location=i.location or "",
        virtual_size=i.virtual_size or 0,
    )


def _visible_to(project_id: str) -> ColumnElement[bool]:
    # Loom has no image members yet, so "shared" images are visible to their owner only.
    return or_(Image.visibility.in_(("public", "community")), Image.owner == project_id)


def _sort_value(image: Image, key: str) -> Any:
    value = getattr(image, key)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # None sorts first, whatever the type, so mixed rows never fail to compare.
    return (value is not None, value if value is not None else 0)


class ImagesServicer(images_pb2_grpc.ImagesServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def _get(
        self, s: AsyncSession, context: Any, image_id: str, project_id: str, *, owned: bool
    ) -> Image:
        image = await s.get(Image, image_id)
        visible = image is not None and not image.deleted
        if visible and project_id and image is not None:
            if owned:
                visible = image.owner == project_id
            else:
                visible = image.visibility in ("public", "community") or image.owner == project_id
        if not visible or image is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"No image found with ID {image_id}")
        return image

    def _check_formats(self, disk_format: str, container_format: str) -> str | None:
        if disk_format and disk_format not in DISK_FORMATS:
            return f"Invalid disk format '{disk_format}'"
        if container_format and container_format not in CONTAINER_FORMATS:
            return f"Invalid container format '{container_format}'"
        return None

    async def CreateImage(self, request: images_pb2.CreateImageRequest, context: Any) -> Any:
        want = request.image
        visibility = want.visibility or "shared"
        if visibility not in VISIBILITIES:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid visibility {visibility}"
            )
        problem = self._check_formats(want.disk_format, want.container_format)
        if problem:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        if want.min_disk < 0 or want.min_ram < 0:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "min_disk and min_ram must be >= 0"
            )
        created = now()
        derived = not want.id and bool(request.request_id)
        image = Image(
            id=want.id or (id_for_request("image", request.request_id) if derived else new_uuid()),
            name=want.name or None,
            status="queued",
            disk_format=want.disk_format or None,
            container_format=want.container_format or None,
            min_disk=want.min_disk,
            min_ram=want.min_ram,
            visibility=visibility,
            protected=want.protected,
            owner=want.owner or None,
            properties=dict(want.properties),
            tags=sorted(set(want.tags)),
            deleted=False,
            created_at=created,
            updated_at=created,
        )
        async with self._sessions.begin() as s:
            existing = await s.get(Image, image.id)
            if existing is not None and derived and existing.owner == image.owner:
                # A retry of the same request: answer as the first attempt did.
                return images_pb2.CreateImageResponse(image=image_pb(existing))
            if existing is not None:
                await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"Image {image.id} exists")
            s.add(image)
        return images_pb2.CreateImageResponse(image=image_pb(image))

    async def GetImage(self, request: images_pb2.GetImageRequest, context: Any) -> Any:
        async with self._sessions() as s:
            image = await self._get(s, context, request.id, request.project_id, owned=False)
        return images_pb2.GetImageResponse(image=image_pb(image))

    async def ListImages(self, request: images_pb2.ListImagesRequest, context: Any) -> Any:
        key = request.sort_key or "created_at"
        direction = request.sort_dir or "desc"
        if key not in _SORT_KEYS or direction not in ("asc", "desc"):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid sort: {key} {direction}"
            )
        query = select(Image).where(Image.deleted.is_(False))
        if request.project_id:
            query = query.where(_visible_to(request.project_id))
        if request.name:
            query = query.where(Image.name == request.name)
        if request.ids:
            query = query.where(Image.id.in_(list(request.ids)))
        if request.status:
            query = query.where(Image.status == request.status)
        if request.visibility:
            query = query.where(Image.visibility == request.visibility)
        for prop, value in request.properties.items():
            query = query.where(Image.properties[prop].as_string() == value)
        async with self._sessions() as s:
            rows = list(await s.scalars(query))
        # Sorted in memory with the id as tiebreak, so a marker always resumes exactly.
        rows.sort(key=lambda i: (_sort_value(i, key), i.id), reverse=direction == "desc")
        if request.marker:
            ids = [i.id for i in rows]
            if request.marker not in ids:
                await abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, f"marker {request.marker} not found"
                )
            rows = rows[ids.index(request.marker) + 1 :]
        next_marker = ""
        limit = request.limit or 25
        if len(rows) > limit:
            rows = rows[:limit]
            next_marker = rows[-1].id
        return images_pb2.ListImagesResponse(
            images=[image_pb(i) for i in rows], next_marker=next_marker
        )

    async def UpdateImage(self, request: images_pb2.UpdateImageRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            image = await self._get(s, context, request.id, request.project_id, owned=True)
            if request.HasField("name"):
                image.name = request.name or None
            if request.HasField("visibility"):
                if request.visibility not in VISIBILITIES:
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"Invalid visibility {request.visibility}",
                    )
                image.visibility = request.visibility
            if request.HasField("protected"):
                image.protected = request.protected
            if request.HasField("min_disk"):
                image.min_disk = int(request.min_disk)
            if request.HasField("min_ram"):
                image.min_ram = int(request.min_ram)
            for field in ("disk_format", "container_format"):
                if request.HasField(field):
                    if image.status != "queued":
                        await abort(
                            context,
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"{field} can only change while the image is queued",
                        )
                    value = getattr(request, field)
                    problem = self._check_formats(
                        value if field == "disk_format" else "",
                        value if field == "container_format" else "",
                    )
                    if problem:
                        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
                    setattr(image, field, value or None)
            props = dict(image.properties or {})
            props.update(dict(request.set_properties))
            for key in request.remove_properties:
                props.pop(key, None)
            image.properties = props
            if request.replace_tags:
                image.tags = sorted(set(request.tags))
            image.updated_at = now()
        return images_pb2.UpdateImageResponse(image=image_pb(image))

    async def DeleteImage(self, request: images_pb2.DeleteImageRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            image = await self._get(s, context, request.id, request.project_id, owned=True)
            if image.protected:
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Image {image.id} is protected and cannot be deleted.",
                )
            location = image.location or ""
            image.deleted = True
            image.status = "deleted"
            image.updated_at = now()
        return images_pb2.DeleteImageResponse(location=location)

    async def RecordImageData(
        self, request: images_pb2.RecordImageDataRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            image = await self._get(s, context, request.id, "", owned=False)
            if image.status not in ("queued", "saving"):
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Image {image.id} is {image.status}: data can only be uploaded once",
                )
            image.size = request.size
            image.checksum = request.checksum
            image.os_hash_algo = request.os_hash_algo
            image.os_hash_value = request.os_hash_value
            image.location = request.location
            image.virtual_size = request.virtual_size or None
            image.status = "active"
            image.updated_at = now()
        return images_pb2.RecordImageDataResponse(image=image_pb(image))
