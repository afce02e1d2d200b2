"""ImagesService: image metadata, tags, activation and members. The bytes live in the
gateway's image store; this service records where they are and their hashes, and flips the
status to active. Who sees an image is `visibility.py`'s rule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NoReturn

import grpc
from loom.image.v1 import images_pb2, images_pb2_grpc
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import ImageConfig
from controlplane.db.models import Image, ImageMember
from controlplane.image.visibility import (
    MEMBER_STATUS_FILTERS,
    MEMBER_STATUSES,
    listed_for,
    visible_to,
)
from controlplane.runtime.rpc import abort, id_for_request, new_uuid, now, timestamp

VISIBILITIES = ("public", "private", "shared", "community")
DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")
_SORT_KEYS = ("created_at", "updated_at", "name", "size", "status", "id", "disk_format")
# Glance's limit on a tag's length.
MAX_TAG_LENGTH = 255


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


def member_pb(m: ImageMember) -> images_pb2.ImageMember:
    return images_pb2.ImageMember(
        image_id=m.image_id,
        member_id=m.member_id,
        status=m.status,
        created_at=timestamp(m.created_at),
        updated_at=timestamp(m.updated_at or m.created_at),
    )


def _owns(image: Image, project_id: str) -> bool:
    """The caller may act as the image's owner: it is, or it is not scoped (an admin)."""
    return not project_id or image.owner == project_id


def _sort_value(image: Image, key: str) -> Any:
    value = getattr(image, key)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # None sorts first, whatever the type, so mixed rows never fail to compare.
    return (value is not None, value if value is not None else 0)


class ImagesServicer(images_pb2_grpc.ImagesServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], cfg: ImageConfig) -> None:
        self._sessions = sessions
        self._cfg = cfg

    async def _get(
        self,
        s: AsyncSession,
        context: Any,
        image_id: str,
        project_id: str,
        *,
        owned: bool,
        lock: bool = False,
    ) -> Image:
        """The image if the project sees it (owns it, when `owned`); NOT_FOUND otherwise.
        `lock` holds its row to the end of the transaction, so read-modify-writes of its
        tags or members do not interleave."""
        query = select(Image, visible_to(project_id)).where(
            Image.id == image_id, Image.deleted.is_(False)
        )
        if lock:
            query = query.with_for_update(of=Image)
        row = (await s.execute(query)).one_or_none()
        image = row[0] if row is not None else None
        visible = row is not None and bool(row[1])
        if visible and owned and image is not None:
            visible = _owns(image, project_id)
        if not visible or image is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"No image found with ID {image_id}")
        return image

    async def _check_tag_count(self, context: Any, count: int) -> None:
        if count > self._cfg.tag_limit:
            await abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Maximum number of tags exceeded: attempted {count},"
                f" maximum {self._cfg.tag_limit}.",
            )

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
        await self._check_tag_count(context, len(set(want.tags)))
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
        visibility, member_status = request.visibility, request.member_status
        if visibility and visibility not in (*VISIBILITIES, "all"):
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"Invalid visibility {visibility}"
            )
        if member_status and member_status not in MEMBER_STATUS_FILTERS:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Invalid member_status {member_status}",
            )
        query = select(Image).where(
            Image.deleted.is_(False), listed_for(request.project_id, visibility, member_status)
        )
        if request.name:
            query = query.where(Image.name == request.name)
        if request.ids:
            query = query.where(Image.id.in_(list(request.ids)))
        if request.status:
            query = query.where(Image.status == request.status)
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
            if request.HasField("owner"):
                if request.project_id and request.owner != request.project_id:
                    await abort(
                        context,
                        grpc.StatusCode.PERMISSION_DENIED,
                        "You are not permitted to change the owner of this image.",
                    )
                image.owner = request.owner or None
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
                await self._check_tag_count(context, len(set(request.tags)))
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
            # Its members go with it (the image row stays, marked deleted).
            await s.execute(delete(ImageMember).where(ImageMember.image_id == image.id))
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

    async def AddImageTag(self, request: images_pb2.AddImageTagRequest, context: Any) -> Any:
        if not request.tag or len(request.tag) > MAX_TAG_LENGTH:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"A tag is 1 to {MAX_TAG_LENGTH} characters long.",
            )
        async with self._sessions.begin() as s:
            image = await self._get(
                s, context, request.id, request.project_id, owned=True, lock=True
            )
            tags = {str(t) for t in image.tags or []}
            if request.tag not in tags:
                await self._check_tag_count(context, len(tags) + 1)
                image.tags = sorted(tags | {request.tag})
                image.updated_at = now()
        return images_pb2.AddImageTagResponse(image=image_pb(image))

    async def RemoveImageTag(self, request: images_pb2.RemoveImageTagRequest, context: Any) -> Any:
        async with self._sessions.begin() as s:
            image = await self._get(
                s, context, request.id, request.project_id, owned=True, lock=True
            )
            tags = [str(t) for t in image.tags or []]
            if request.tag not in tags:
                await abort(
                    context, grpc.StatusCode.NOT_FOUND, f"Image {image.id} has no such tag."
                )
            image.tags = [t for t in tags if t != request.tag]
            image.updated_at = now()
        return images_pb2.RemoveImageTagResponse(image=image_pb(image))

    async def _set_active(
        self, context: Any, image_id: str, project_id: str, *, active: bool
    ) -> Image:
        """Deactivates (active=False) or reactivates an image; idempotent. Glance allows
        either only between active and deactivated."""
        verb = "reactivate" if active else "deactivate"
        async with self._sessions.begin() as s:
            image = await self._get(s, context, image_id, project_id, owned=True, lock=True)
            if image.status not in ("active", "deactivated"):
                await abort(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Not allowed to {verb} image in status '{image.status}'",
                )
            wanted = "active" if active else "deactivated"
            if image.status != wanted:
                image.status = wanted
                image.updated_at = now()
        return image

    async def DeactivateImage(
        self, request: images_pb2.DeactivateImageRequest, context: Any
    ) -> Any:
        image = await self._set_active(context, request.id, request.project_id, active=False)
        return images_pb2.DeactivateImageResponse(image=image_pb(image))

    async def ReactivateImage(
        self, request: images_pb2.ReactivateImageRequest, context: Any
    ) -> Any:
        image = await self._set_active(context, request.id, request.project_id, active=True)
        return images_pb2.ReactivateImageResponse(image=image_pb(image))

    async def _shared(
        self, s: AsyncSession, context: Any, image_id: str, project_id: str, *, lock: bool = False
    ) -> Image:
        """The image, if the project sees it (NOT_FOUND) and it is shared (only a shared
        image has members: PERMISSION_DENIED)."""
        image = await self._get(s, context, image_id, project_id, owned=False, lock=lock)
        if image.visibility != "shared":
            await abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "Only shared images have members."
            )
        return image

    async def _member(
        self, s: AsyncSession, context: Any, image: Image, project_id: str, member_id: str
    ) -> ImageMember:
        """One member as the caller may see it: the owner sees every member, a member only
        itself. NOT_FOUND otherwise."""
        member = await s.scalar(
            select(ImageMember).where(
                ImageMember.image_id == image.id, ImageMember.member_id == member_id
            )
        )
        if member is None or not (_owns(image, project_id) or member_id == project_id):
            await abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"Member {member_id[:64]} not found for image {image.id}.",
            )
        return member

    async def CreateImageMember(
        self, request: images_pb2.CreateImageMemberRequest, context: Any
    ) -> Any:
        if not request.member_id or len(request.member_id) > 255:
            await abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, "A member is a project id (1-255)."
            )
        try:
            async with self._sessions.begin() as s:
                image = await self._shared(
                    s, context, request.image_id, request.project_id, lock=True
                )
                if not _owns(image, request.project_id):
                    await abort(
                        context,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"Not allowed to create members for image {image.id}.",
                    )
                members = list(
                    await s.scalars(
                        select(ImageMember.member_id).where(ImageMember.image_id == image.id)
                    )
                )
                if request.member_id in members:
                    await self._duplicate_member(context, request)
                if len(members) >= self._cfg.member_limit:
                    await abort(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"Image member limit exceeded for image {image.id}:"
                        f" maximum {self._cfg.member_limit}.",
                    )
                created = now()
                member = ImageMember(
                    image_id=image.id,
                    member_id=request.member_id,
                    status="pending",
                    created_at=created,
                    updated_at=created,
                )
                s.add(member)
                await s.flush()
        except IntegrityError:
            # Added by a concurrent call between the check and the insert.
            await self._duplicate_member(context, request)
        return images_pb2.CreateImageMemberResponse(member=member_pb(member))

    async def _duplicate_member(
        self, context: Any, request: images_pb2.CreateImageMemberRequest
    ) -> NoReturn:
        await abort(
            context,
            grpc.StatusCode.ALREADY_EXISTS,
            f"Member {request.member_id[:64]} is duplicated for image {request.image_id}",
        )

    async def ListImageMembers(
        self, request: images_pb2.ListImageMembersRequest, context: Any
    ) -> Any:
        async with self._sessions() as s:
            image = await self._shared(s, context, request.image_id, request.project_id)
            query = (
                select(ImageMember)
                .where(ImageMember.image_id == image.id)
                .order_by(ImageMember.created_at, ImageMember.id)
            )
            if not _owns(image, request.project_id):
                query = query.where(ImageMember.member_id == request.project_id)
            members = list(await s.scalars(query))
        return images_pb2.ListImageMembersResponse(members=[member_pb(m) for m in members])

    async def GetImageMember(self, request: images_pb2.GetImageMemberRequest, context: Any) -> Any:
        async with self._sessions() as s:
            image = await self._shared(s, context, request.image_id, request.project_id)
            member = await self._member(s, context, image, request.project_id, request.member_id)
        return images_pb2.GetImageMemberResponse(member=member_pb(member))

    async def UpdateImageMember(
        self, request: images_pb2.UpdateImageMemberRequest, context: Any
    ) -> Any:
        if request.status not in MEMBER_STATUSES:
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                'Status must be "pending", "accepted" or "rejected".',
            )
        async with self._sessions.begin() as s:
            image = await self._shared(s, context, request.image_id, request.project_id)
            member = await self._member(s, context, image, request.project_id, request.member_id)
            if request.project_id and request.project_id != member.member_id:
                # The owner offers the image; only the member answers.
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Only the member may change its status for image {image.id}.",
                )
            if member.status != request.status:
                member.status = request.status
                member.updated_at = now()
        return images_pb2.UpdateImageMemberResponse(member=member_pb(member))

    async def DeleteImageMember(
        self, request: images_pb2.DeleteImageMemberRequest, context: Any
    ) -> Any:
        async with self._sessions.begin() as s:
            image = await self._shared(s, context, request.image_id, request.project_id)
            member = await self._member(s, context, image, request.project_id, request.member_id)
            if not _owns(image, request.project_id):
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"Not allowed to delete members for image {image.id}.",
                )
            await s.delete(member)
        return images_pb2.DeleteImageMemberResponse()
