"""Snapshots of a server's root disk as new private images of its project: the
createImage action, the createBackup action (a snapshot with `image_type` backup and a
`backup_type`, after which the host deletes the server's older backups of that type beyond
the rotation), and the image a shelve takes (`<name>-shelved`).

The image is registered here, queued (qcow2, bare), with what Nova records of a
snapshot: `image_type` snapshot, `instance_uuid`, `user_id`, `base_image_ref` and the
base image's own properties, `min_disk` and `min_ram` no smaller than the server's
flavor and base image need, then the user's metadata. The conductor then has the host
copy the disk and upload it (controlplane/conductor, nodeagent/snapshots.py); the image
becomes active once its bytes arrive. A server the conductor refuses to snapshot (its
state, its lock) leaves no image behind, and neither does a failed snapshot (the host
deletes it). A shelve's image is deleted by the host once the server runs again, or here
when the server is deleted (the conductor's delete answer names it)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message
from loom.conductor.v1 import servers_pb2
from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.context import RequestContext
from gateway.compute.common import empty, ok
from gateway.conductor import call
from gateway.errors import ApiError
from gateway.state import gateway_of, microversion, request_id

# Base image properties a snapshot does not inherit: they describe that image's own
# bytes or bookkeeping, not the guest's.
_NOT_INHERITED = frozenset(
    {"image_type", "instance_uuid", "user_id", "base_image_ref", "image_location"}
)


async def _base_image(request: Request, image_id: str) -> images_pb2.Image | None:
    try:
        reply = await call(
            gateway_of(request).conductor.images.GetImage, images_pb2.GetImageRequest(id=image_id)
        )
    except ApiError:
        return None  # deleted since: nothing to inherit
    image: images_pb2.Image = reply.image
    return image


async def register_snapshot(
    request: Request,
    ctx: RequestContext,
    server: servers_pb2.Server,
    name: str,
    metadata: dict[str, Any] | None = None,
    *,
    backup_type: str | None = None,
) -> str:
    """A queued private image of the server's project for a snapshot of its root disk (a
    backup of `backup_type` when that is given); returns its id."""
    base = await _base_image(request, server.image_id) if server.image_id else None
    properties: dict[str, str] = {}
    if base is not None:
        properties.update({k: v for k, v in base.properties.items() if k not in _NOT_INHERITED})
    properties.update(
        {
            "image_type": "snapshot" if backup_type is None else "backup",
            "instance_uuid": server.id,
            "user_id": ctx.user_id,
            "base_image_ref": server.image_id,
        }
    )
    if backup_type is not None:
        properties["backup_type"] = backup_type
    properties.update({str(k): str(v) for k, v in (metadata or {}).items()})
    created = await call(
        gateway_of(request).conductor.images.CreateImage,
        images_pb2.CreateImageRequest(
            request_id=f"{request_id(request)}-{name}",
            image=images_pb2.Image(
                name=name,
                visibility="private",
                disk_format="qcow2",
                container_format="bare",
                min_disk=max(server.flavor.root_gb, base.min_disk if base else 0),
                min_ram=base.min_ram if base else 0,
                owner=server.project_id,
                properties=properties,
            ),
        ),
    )
    image_id: str = created.image.id
    return image_id


async def discard(request: Request, image_id: str) -> None:
    """Deletes an image this API made for a snapshot, with its bytes if it has any."""
    gw = gateway_of(request)
    try:
        reply = await call(
            gw.conductor.images.DeleteImage,
            images_pb2.DeleteImageRequest(request_id=f"{request_id(request)}-discard", id=image_id),
        )
    except ApiError as exc:
        if exc.status == 404:
            return
        raise
    if reply.location:
        gw.image_store.delete(reply.location)


async def create_image(
    request: Request,
    ctx: RequestContext,
    server: servers_pb2.Server,
    body: dict[str, Any],
    common: dict[str, Any],
) -> Response:
    """202; before 2.45 the image's URL in `Location`, from 2.45 `{"image_id": ...}`."""
    image_id = await register_snapshot(request, ctx, server, body["name"], body.get("metadata"))
    await _snapshot(request, common, image_id)
    return _accepted(request, image_id, location=True)


async def create_backup(
    request: Request,
    ctx: RequestContext,
    server: servers_pb2.Server,
    body: dict[str, Any],
    common: dict[str, Any],
) -> Response:
    """202; from 2.45 `{"image_id": ...}`, before it the image's URL in `Location` unless
    the rotation is 0 (that backup is deleted with the rest once it is uploaded)."""
    rotation = int(body["rotation"])
    backup_type = str(body["backup_type"])
    image_id = await register_snapshot(
        request, ctx, server, body["name"], body.get("metadata"), backup_type=backup_type
    )
    await _snapshot(
        request,
        common,
        image_id,
        servers_pb2.BackupRotation(backup_type=backup_type, rotation=rotation),
    )
    return _accepted(request, image_id, location=rotation > 0)


async def _snapshot(
    request: Request,
    common: dict[str, Any],
    image_id: str,
    backup: servers_pb2.BackupRotation | None = None,
) -> None:
    """Asks the conductor for the snapshot into `image_id`."""
    await _or_discard(
        request,
        image_id,
        gateway_of(request).conductor.servers.SnapshotServer,
        servers_pb2.SnapshotServerRequest(**common, image_id=image_id, backup=backup),
    )


async def _or_discard(
    request: Request, image_id: str, method: Callable[..., Awaitable[Any]], message: Message
) -> None:
    """Calls the conductor about an image just registered for it; when the conductor
    refuses, the image is deleted (nobody will ever upload its bytes)."""
    try:
        await call(method, message)
    except ApiError:
        await discard(request, image_id)
        raise


def _accepted(request: Request, image_id: str, *, location: bool) -> Response:
    if microversion(request).at_least("2.45"):
        return ok({"image_id": image_id}, 202)
    response = empty(202)
    if location:
        base_url = str(request.base_url).rstrip("/")
        response.headers["Location"] = f"{base_url}/compute/v2.1/images/{image_id}"
    return response


async def shelve(
    request: Request, ctx: RequestContext, server: servers_pb2.Server, common: dict[str, Any]
) -> None:
    """shelve: the host shuts the server off and snapshots its disk into `<name>-shelved`
    (an offloaded server is unshelved from it; the image goes once the server runs)."""
    image_id = await register_snapshot(request, ctx, server, f"{server.name}-shelved")
    await _or_discard(
        request,
        image_id,
        gateway_of(request).conductor.servers.ShelveServer,
        servers_pb2.ShelveServerRequest(**common, image_id=image_id),
    )
