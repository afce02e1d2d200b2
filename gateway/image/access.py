"""Who sees and changes an image, and its deletion with its data: shared by the Image API
(/image/v2) and the compute API's image proxy (/compute/v2.1/images)."""

from __future__ import annotations

from loom.image.v1 import images_pb2
from starlette.requests import Request

from gateway.auth.context import RequestContext
from gateway.conductor import call
from gateway.errors import Forbidden
from gateway.state import gateway_of, request_id


def scope(ctx: RequestContext) -> str:
    """The project whose view of the images the caller has: an admin sees every image."""
    return "" if ctx.is_admin else ctx.project_id


def require_owner(ctx: RequestContext, image: images_pb2.Image) -> None:
    """Only an image's owner, or an admin, changes or deletes it."""
    if not ctx.is_admin and image.owner != ctx.project_id:
        raise Forbidden("You are not permitted to modify this image.")


async def delete_with_data(request: Request, ctx: RequestContext, image: images_pb2.Image) -> None:
    """Deletes the image (its owner or an admin) and then its bytes from the store."""
    require_owner(ctx, image)
    gw = gateway_of(request)
    reply = await call(
        gw.conductor.images.DeleteImage,
        images_pb2.DeleteImageRequest(
            request_id=request_id(request), id=image.id, project_id=scope(ctx)
        ),
    )
    if reply.location:
        gw.image_store.delete(reply.location)
