"""Image v2 tags, one at a time: `PUT` and `DELETE /v2/images/{id}/tags/{tag}` (the
whole list also changes through a patch of `/tags`)."""

from __future__ import annotations

from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import authenticate
from gateway.errors import BadRequest
from gateway.image.access import call_image, get_image, require_owner, scope
from gateway.routing import IMAGE_OWNER, documented
from gateway.state import gateway_of, request_id

_TAG = "image"
# Glance's limit on a tag's length.
MAX_TAG_LENGTH = 255


def _tag(request: Request) -> str:
    tag: str = request.path_params["tag"]
    if len(tag) > MAX_TAG_LENGTH:
        raise BadRequest(f"A tag is at most {MAX_TAG_LENGTH} characters long.")
    return tag


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def add_tag(request: Request) -> Response:
    """Add a tag (204, idempotent); 413 past the per-image tag limit."""
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_write("modify_image")
    tag = _tag(request)
    image = await get_image(request, ctx)
    require_owner(ctx, image)
    await call_image(
        gateway_of(request).conductor.images.AddImageTag,
        images_pb2.AddImageTagRequest(
            request_id=request_id(request), id=image.id, project_id=scope(ctx), tag=tag
        ),
    )
    return Response(status_code=204)


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def delete_tag(request: Request) -> Response:
    """Remove a tag (204); 404 when the image lacks it."""
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_write("modify_image")
    image = await get_image(request, ctx)
    require_owner(ctx, image)
    await call_image(
        gateway_of(request).conductor.images.RemoveImageTag,
        images_pb2.RemoveImageTagRequest(
            request_id=request_id(request),
            id=image.id,
            project_id=scope(ctx),
            tag=request.path_params["tag"],
        ),
    )
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    p = "/image/v2/images/{image_id}/tags/{tag}"
    return [
        Route(p, add_tag, methods=["PUT"]),
        Route(p, delete_tag, methods=["DELETE"]),
    ]
