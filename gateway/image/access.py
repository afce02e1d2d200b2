"""Who sees and changes an image, and its deletion with its data: shared by the Image API
(/image/v2) and the compute API's image proxy (/compute/v2.1/images)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from loom.image.v1 import images_pb2
from starlette.requests import Request

from gateway.auth.context import RequestContext
from gateway.conductor import call
from gateway.errors import ApiError, Forbidden
from gateway.state import gateway_of, request_id

Resp = TypeVar("Resp")
_UUID = re.compile(r"^[0-9a-fA-F-]{36}$")


def scope(ctx: RequestContext) -> str:
    """The project whose view of the images the caller has: an admin sees every image."""
    return "" if ctx.is_admin else ctx.project_id


async def get_image(request: Request, ctx: RequestContext) -> images_pb2.Image:
    """The path's image, if the caller sees it (404 otherwise)."""
    image_id = request.path_params["image_id"]
    if not _UUID.match(image_id):
        raise ApiError(404, f"No image found with ID {image_id[:64]}")
    reply = await call(
        gateway_of(request).conductor.images.GetImage,
        images_pb2.GetImageRequest(id=image_id, project_id=scope(ctx)),
    )
    image: images_pb2.Image = reply.image
    return image


def require_owner(ctx: RequestContext, image: images_pb2.Image) -> None:
    """Only an image's owner, or an admin, changes or deletes it."""
    if not ctx.is_admin and image.owner != ctx.project_id:
        raise Forbidden("You are not permitted to modify this image.")


async def call_image(
    method: Callable[..., Awaitable[Resp]], request: Any, *, refused_state: int = 409
) -> Resp:
    """Calls the image service with Glance's answers to two refusals: a limit reached
    (members, tags) is 413, and an image whose state refuses the change (protected on
    delete, not active on deactivate) is `refused_state` (Glance says 403 for those)."""
    try:
        return await call(method, request)
    except ApiError as exc:
        cause = exc.__cause__
        code = cause.code() if isinstance(cause, grpc.aio.AioRpcError) else None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise ApiError(413, exc.message) from cause
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            raise ApiError(refused_state, exc.message) from cause
        raise


async def delete_with_data(request: Request, ctx: RequestContext, image: images_pb2.Image) -> None:
    """Deletes the image (its owner or an admin) with its members, and then its bytes
    from the store. A protected image is 403, in both APIs (Glance's answer, and Nova's
    to Glance's)."""
    require_owner(ctx, image)
    gw = gateway_of(request)
    reply = await call_image(
        gw.conductor.images.DeleteImage,
        images_pb2.DeleteImageRequest(
            request_id=request_id(request), id=image.id, project_id=scope(ctx)
        ),
        refused_state=403,
    )
    if reply.location:
        gw.image_store.delete(reply.location)
