"""Image v2 deactivation: `POST /v2/images/{id}/actions/deactivate` and `.../reactivate`.
A deactivated image keeps its record and bytes, but only an admin downloads it and no
server boots from it (the compute API refuses any image that is not active)."""

from __future__ import annotations

from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import authenticate
from gateway.image.access import call_image, get_image, require_owner, scope
from gateway.routing import IMAGE_OWNER, documented
from gateway.state import gateway_of, request_id

_TAG = "image"


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def deactivate(request: Request) -> Response:
    """An active image becomes deactivated (204; idempotent). 403 in any other status."""
    return await _change(request, "deactivate")


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def reactivate(request: Request) -> Response:
    """A deactivated image becomes active again (204; idempotent). 403 in any other
    status."""
    return await _change(request, "reactivate")


async def _change(request: Request, action: str) -> Response:
    """The owner's (or an admin's) deactivate or reactivate, by the image service."""
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_write(action)
    image = await get_image(request, ctx)
    require_owner(ctx, image)
    images = gateway_of(request).conductor.images
    rpc, message = (
        (images.DeactivateImage, images_pb2.DeactivateImageRequest)
        if action == "deactivate"
        else (images.ReactivateImage, images_pb2.ReactivateImageRequest)
    )
    await call_image(
        rpc,
        message(request_id=request_id(request), id=image.id, project_id=scope(ctx)),
        refused_state=403,
    )
    return Response(status_code=204)


def routes() -> list[BaseRoute]:
    p = "/image/v2/images/{image_id}/actions"
    return [
        Route(p + "/deactivate", deactivate, methods=["POST"]),
        Route(p + "/reactivate", reactivate, methods=["POST"]),
    ]
