"""Image v2 members: sharing an image (visibility `shared`) with other projects. The owner
offers it (`pending`), each member answers (`accepted` or `rejected`). The image service
keeps the members and applies who sees what; this module shapes Glance's bodies."""

from __future__ import annotations

from typing import Any

from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext, authenticate
from gateway.errors import ApiError, BadRequest
from gateway.image.access import call_image, get_image, scope
from gateway.image.views import time
from gateway.routing import IMAGE_MEMBER, IMAGE_OWNER, PUBLIC, READER, checked_body, documented
from gateway.state import gateway_of, json_body, request_id
from gateway.validation import compile_schema

_TAG = "image"
STATUSES = ("pending", "accepted", "rejected")
_MEMBER_ID = {"type": "string", "minLength": 1, "maxLength": 255}
CREATE_SCHEMA = compile_schema(
    {"type": "object", "properties": {"member": _MEMBER_ID}, "required": ["member"]}
)
UPDATE_SCHEMA = compile_schema(
    {
        "type": "object",
        "properties": {"status": {"type": "string", "enum": list(STATUSES)}},
        "required": ["status"],
    }
)
# The documents of GET /v2/schemas/member and /v2/schemas/members.
MEMBER_SCHEMA: dict[str, Any] = {
    "name": "member",
    "properties": {
        "created_at": {"type": "string", "description": "Date and time of image member creation"},
        "image_id": {"type": "string", "description": "An identifier for the image"},
        "member_id": {"type": "string", "description": "An identifier for the image member"},
        "schema": {"type": "string", "readOnly": True},
        "status": {"type": "string", "enum": list(STATUSES), "description": "The status"},
        "updated_at": {
            "type": "string",
            "description": "Date and time of last modification of image member",
        },
    },
}
MEMBERS_SCHEMA: dict[str, Any] = {
    "name": "members",
    "properties": {
        "members": {"type": "array", "items": MEMBER_SCHEMA},
        "schema": {"type": "string"},
    },
    "links": [{"rel": "describedby", "href": "{schema}"}],
}


def member(m: images_pb2.ImageMember) -> dict[str, Any]:
    return {
        "created_at": time(m.created_at),
        "updated_at": time(m.updated_at),
        "image_id": m.image_id,
        "member_id": m.member_id,
        "status": m.status,
        "schema": "/v2/schemas/member",
    }


def _ctx(request: Request) -> RequestContext:
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_read("get_members")
    return ctx


def _image_id(request: Request) -> str:
    image_id: str = request.path_params["image_id"]
    if len(image_id) > 36:
        raise ApiError(404, f"No image found with ID {image_id[:64]}")
    return image_id


async def _body(request: Request, schema: Any) -> dict[str, Any]:
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    checked_body(schema, body)
    return body


@documented(body=CREATE_SCHEMA, tag=_TAG, policy=IMAGE_OWNER)
async def create_member(request: Request) -> Response:
    """Offer a shared image to a project (`{"member": "<project id>"}`); it starts
    pending. 403 unless the image is shared and the caller owns it, 409 for a member it
    has, 413 past the member limit."""
    ctx = _ctx(request)
    ctx.require_write("add_member")
    # Another project's image is 404 whatever the body says.
    await get_image(request, ctx)
    body = await _body(request, CREATE_SCHEMA)
    reply = await call_image(
        gateway_of(request).conductor.images.CreateImageMember,
        images_pb2.CreateImageMemberRequest(
            request_id=request_id(request),
            image_id=_image_id(request),
            project_id=scope(ctx),
            member_id=body["member"],
        ),
    )
    return JSONResponse(member(reply.member))


@documented(tag=_TAG, policy=READER)
async def list_members(request: Request) -> Response:
    """A shared image's members: every one for its owner, its own entry for a member."""
    ctx = _ctx(request)
    reply = await call_image(
        gateway_of(request).conductor.images.ListImageMembers,
        images_pb2.ListImageMembersRequest(image_id=_image_id(request), project_id=scope(ctx)),
    )
    return JSONResponse(
        {"members": [member(m) for m in reply.members], "schema": "/v2/schemas/members"}
    )


@documented(tag=_TAG, policy=READER)
async def show_member(request: Request) -> Response:
    """One member of a shared image, as the list shows them to the caller."""
    ctx = _ctx(request)
    reply = await call_image(
        gateway_of(request).conductor.images.GetImageMember,
        images_pb2.GetImageMemberRequest(
            image_id=_image_id(request),
            project_id=scope(ctx),
            member_id=request.path_params["member_id"],
        ),
    )
    return JSONResponse(member(reply.member))


@documented(body=UPDATE_SCHEMA, tag=_TAG, policy=IMAGE_MEMBER)
async def update_member(request: Request) -> Response:
    """The member's answer (`{"status": "pending|accepted|rejected"}`). Only the member
    project answers: the image's owner is 403."""
    ctx = _ctx(request)
    ctx.require_write("modify_member")
    await get_image(request, ctx)
    body = await _body(request, UPDATE_SCHEMA)
    reply = await call_image(
        gateway_of(request).conductor.images.UpdateImageMember,
        images_pb2.UpdateImageMemberRequest(
            request_id=request_id(request),
            image_id=_image_id(request),
            project_id=scope(ctx),
            member_id=request.path_params["member_id"],
            status=body["status"],
        ),
    )
    return JSONResponse(member(reply.member))


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def delete_member(request: Request) -> Response:
    """Withdraw the image from a project (its owner or an admin)."""
    ctx = _ctx(request)
    ctx.require_write("delete_member")
    await call_image(
        gateway_of(request).conductor.images.DeleteImageMember,
        images_pb2.DeleteImageMemberRequest(
            request_id=request_id(request),
            image_id=_image_id(request),
            project_id=scope(ctx),
            member_id=request.path_params["member_id"],
        ),
    )
    return Response(status_code=204)


@documented(tag=_TAG, policy=PUBLIC)
async def member_schema(request: Request) -> Response:
    """The image member schema document."""
    return JSONResponse(MEMBER_SCHEMA)


@documented(tag=_TAG, policy=PUBLIC)
async def members_schema(request: Request) -> Response:
    """The image members list schema document."""
    return JSONResponse(MEMBERS_SCHEMA)


def routes() -> list[BaseRoute]:
    p = "/image/v2/images/{image_id}/members"
    return [
        Route("/image/v2/schemas/member", member_schema, methods=["GET"]),
        Route("/image/v2/schemas/members", members_schema, methods=["GET"]),
        Route(p, list_members, methods=["GET"]),
        Route(p, create_member, methods=["POST"]),
        Route(p + "/{member_id}", show_member, methods=["GET"]),
        Route(p + "/{member_id}", update_member, methods=["PUT"]),
        Route(p + "/{member_id}", delete_member, methods=["DELETE"]),
    ]
