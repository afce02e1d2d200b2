"""Image v2 at /image: Glance-shaped image records whose metadata lives in the
conductor and whose bytes stream to the gateway's image store."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext, authenticate
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, Conflict, Forbidden
from gateway.image import activation, members, tags, views
from gateway.image.access import (
    call_image,
    delete_with_data,
    get_image,
    require_owner,
    scope,
)
from gateway.routing import (
    IMAGE_OWNER,
    MEMBER,
    PUBLIC,
    READER,
    checked_body,
    checked_query,
    documented,
)
from gateway.state import base_url, gateway_of, json_body, request_id
from gateway.validation import Query, QueryParam, compile_schema
from gateway.validation.schema import shorten

_TAG = "image"
PATCH_MEDIA_TYPES = (
    "application/openstack-images-v2.1-json-patch",
    "application/openstack-images-v2.0-json-patch",
)
_DISK = ["ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop", None]
_CONTAINER = ["ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed", None]
_CORE_SCHEMA: dict[str, Any] = {
    "name": {"type": ["string", "null"], "maxLength": 255},
    "visibility": {"type": "string", "enum": ["public", "private", "shared", "community"]},
    "protected": {"type": "boolean"},
    "min_disk": {"type": "integer", "minimum": 0},
    "min_ram": {"type": "integer", "minimum": 0},
    "disk_format": {"type": ["string", "null"], "enum": _DISK},
    "container_format": {"type": ["string", "null"], "enum": _CONTAINER},
    "tags": {
        "type": "array",
        "items": {"type": "string", "maxLength": 255},
        "maxItems": 128,
    },
    "os_hidden": {"type": "boolean"},
    "owner": {"type": ["string", "null"], "maxLength": 255},
}
CREATE_SCHEMA = compile_schema(
    {
        "type": "object",
        "properties": {
            **_CORE_SCHEMA,
            "id": {
                "type": "string",
                "pattern": "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}"
                "-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$",
            },
        },
        # Everything else is a free-form property, which Glance stores as a string.
        "additionalProperties": {"type": "string", "maxLength": 65535},
    }
)
PATCH_SCHEMA = compile_schema(
    {
        "type": "array",
        "items": {
            "type": "object",
            "required": ["op", "path"],
            "additionalProperties": False,
            "properties": {
                "op": {"type": "string", "enum": ["add", "replace", "remove"]},
                # Glance's property names are at most 255 characters.
                "path": {"type": "string", "pattern": "^/[^/]+$", "maxLength": 256},
                "value": {},
            },
        },
    }
)
# One core attribute a patch sets, checked as the property it names.
_CORE_VALUE = compile_schema({"type": "object", "properties": _CORE_SCHEMA})
LIST_QUERY = Query(
    QueryParam("name"),
    QueryParam("id"),
    QueryParam("status"),
    QueryParam("visibility", enum=("public", "private", "shared", "community", "all")),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
    QueryParam("sort_key"),
    QueryParam("sort_dir", enum=("asc", "desc")),
    QueryParam("sort"),
    # Which shared images of other projects are listed: those the caller's project
    # answered so (default accepted).
    QueryParam("member_status", enum=("pending", "accepted", "rejected", "all")),
    # Accepted for client compatibility; Loom has no hidden images.
    QueryParam("os_hidden", "boolean"),
)
_MAX_LIMIT = 1000
# The document of GET /v2/schemas/image (and the items of /v2/schemas/images).
_IMAGE_SCHEMA: dict[str, Any] = {
    "name": "image",
    "properties": {"id": {"type": "string"}, **_CORE_SCHEMA},
    "additionalProperties": {"type": "string"},
}


def _ctx(request: Request) -> RequestContext:
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_read("get_images")
    return ctx


def _version_list(request: Request) -> dict[str, Any]:
    href = f"{base_url(request)}/image/v2/"
    values = [
        {
            "id": f"v2.{minor}",
            "status": "CURRENT" if minor == 9 else "SUPPORTED",
            "links": [{"rel": "self", "href": href}],
        }
        for minor in range(9, -1, -1)
    ]
    return {"versions": values}


@documented(tag=_TAG, policy=PUBLIC)
async def versions(request: Request) -> Response:
    """Image API versions."""
    return JSONResponse(_version_list(request), status_code=300)


@documented(query=LIST_QUERY, tag=_TAG, policy=READER)
async def list_images(request: Request) -> Response:
    """Images listed for the project, filtered and paginated: public ones, its own, and
    the shared ones offered to it that it accepted (`member_status` chooses another
    answer; other projects' community images only with `visibility=community` or `all`).
    A parameter that is not one of the list's own is a filter on the property of that
    name (exact value)."""
    ctx = _ctx(request)
    q = checked_query(request, LIST_QUERY, ignore_unknown=True)
    properties = _property_filters(request)
    ids: list[str] = []
    if "id" in q:
        raw = q["id"]
        ids = [i for i in (raw[3:] if raw.startswith("in:") else raw).split(",") if i]
    sort_key, sort_dir = q.get("sort_key", "created_at"), q.get("sort_dir", "desc")
    if "sort" in q:
        key, _, direction = q["sort"].split(",")[0].partition(":")
        sort_key, sort_dir = key, direction or "desc"
    limit = min(q.get("limit", 25), _MAX_LIMIT)
    visibility = q.get("visibility", "")
    reply = await call(
        gateway_of(request).conductor.images.ListImages,
        images_pb2.ListImagesRequest(
            project_id=scope(ctx),
            name=q.get("name", ""),
            ids=ids,
            status=q.get("status", ""),
            visibility=visibility,
            member_status=q.get("member_status", ""),
            limit=limit,
            marker=q.get("marker", ""),
            sort_key=sort_key,
            sort_dir=sort_dir,
            properties=properties,
        ),
    )
    body: dict[str, Any] = {
        "images": [views.image(i) for i in reply.images],
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if reply.next_marker:
        params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("marker",)]
        if "limit" not in q:
            params.append(("limit", str(limit)))
        params.append(("marker", reply.next_marker))
        body["next"] = f"/v2/images?{urlencode(params)}"
    return JSONResponse(body)


def _property_filters(request: Request) -> dict[str, str]:
    """The query's property filters: every parameter the list does not define. A core
    attribute it cannot filter on is refused, not taken for a property nobody has."""
    filters: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in LIST_QUERY:
            continue
        if key in views.CORE or key in views.READ_ONLY:
            raise BadRequest(f"Filtering images by {shorten(key)} is not supported.")
        if key in filters and filters[key] != value:
            raise BadRequest(f"Property {shorten(key)} is given twice with different values.")
        filters[key] = value
    return filters


def _reject_read_only(keys: list[str]) -> None:
    for key in keys:
        if key in views.READ_ONLY or key.startswith("os_glance"):
            raise Forbidden(f"Attribute '{shorten(key)}' is read-only.")


@documented(body=CREATE_SCHEMA, tag=_TAG, policy=MEMBER)
async def create_image(request: Request) -> Response:
    """Register an image (queued until its data is uploaded)."""
    ctx = _ctx(request)
    ctx.require_write("add_image")
    body = await json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The image must be a JSON object.")
    _reject_read_only([k for k in body if k != "id"])
    checked_body(CREATE_SCHEMA, body)
    if body.get("visibility") == "public" and not ctx.is_admin:
        raise Forbidden("You are not authorized to complete publicize_image action.")
    owner = body.get("owner", ctx.project_id)
    if owner != ctx.project_id and not ctx.is_admin:
        raise Forbidden(f"You are not permitted to create images owned by '{shorten(owner)}'.")
    props = {k: v for k, v in body.items() if k not in views.CORE and k not in ("id", "os_hidden")}
    reply = await call_image(
        gateway_of(request).conductor.images.CreateImage,
        images_pb2.CreateImageRequest(
            request_id=request_id(request),
            image=images_pb2.Image(
                id=body.get("id", ""),
                name=body.get("name") or "",
                visibility=body.get("visibility", "shared"),
                protected=body.get("protected", False),
                min_disk=body.get("min_disk", 0),
                min_ram=body.get("min_ram", 0),
                disk_format=body.get("disk_format") or "",
                container_format=body.get("container_format") or "",
                tags=body.get("tags", []),
                owner=owner or "",
                properties=props,
            ),
        ),
    )
    return JSONResponse(views.image(reply.image), status_code=201)


@documented(tag=_TAG, policy=READER)
async def show_image(request: Request) -> Response:
    """One image."""
    ctx = _ctx(request)
    return JSONResponse(views.image(await get_image(request, ctx)))


@documented(tag=_TAG, policy=READER)
async def image_tasks(request: Request) -> Response:
    """The image's tasks: none, ever. Loom runs no import tasks (an image's data arrives by
    upload, a snapshot's from its host), so the list is empty for every image the caller
    sees, and 404 for any other."""
    ctx = _ctx(request)
    await get_image(request, ctx)
    return JSONResponse({"tasks": []})


def _from_v2_0_patch(ops: Any) -> Any:
    """The v2.0 patch media type writes an operation as its verb naming the path
    (`{"replace": "/name", "value": ...}`); v2.1's is `{"op", "path", "value"}`. Anything
    that is not one verb's operation is left as it is, for the schema to refuse."""
    if not isinstance(ops, list):
        return ops
    out: list[Any] = []
    for op in ops:
        verbs = [v for v in ("add", "replace", "remove") if isinstance(op, dict) and v in op]
        if len(verbs) == 1 and "op" not in op and "path" not in op:
            verb = verbs[0]
            rest = {k: v for k, v in op.items() if k != verb}
            out.append({"op": verb, "path": op[verb], **rest})
        else:
            out.append(op)
    return out


@documented(body=PATCH_SCHEMA, tag=_TAG, policy=IMAGE_OWNER)
async def update_image(request: Request) -> Response:
    """Change an image with a JSON patch (application/openstack-images-v2.1-json-patch)."""
    ctx = _ctx(request)
    ctx.require_write("modify_image")
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype not in PATCH_MEDIA_TYPES:
        raise ApiError(
            415,
            f"Unsupported Content-Type {shorten(ctype)!r}: use {PATCH_MEDIA_TYPES[0]}",
            headers={"Accept-Patch": ", ".join(PATCH_MEDIA_TYPES)},
        )
    ops = await json_body(request)
    if ctype == PATCH_MEDIA_TYPES[1]:
        ops = _from_v2_0_patch(ops)
    checked_body(PATCH_SCHEMA, ops)
    image = await get_image(request, ctx)
    require_owner(ctx, image)
    req = images_pb2.UpdateImageRequest(
        request_id=request_id(request), id=image.id, project_id=scope(ctx)
    )
    for op in ops:
        key = op["path"][1:]
        _reject_read_only([key])
        if op["op"] != "remove" and "value" not in op:
            raise BadRequest(f"Operation {op['op']} on {shorten(op['path'])} needs a value.")
        if key in views.CORE or key == "os_hidden":
            if op["op"] == "remove":
                raise Forbidden(f"Attribute '{key}' cannot be removed.")
            checked_body(_CORE_VALUE, {key: op["value"]})
            value = op["value"]
            if key == "visibility" and value == "public" and not ctx.is_admin:
                raise Forbidden("You are not authorized to complete publicize_image action.")
            if key == "owner" and value != ctx.project_id and not ctx.is_admin:
                raise Forbidden(
                    f"You are not permitted to give this image to '{shorten(str(value))}'."
                )
            if key == "tags":
                req.replace_tags = True
                req.tags[:] = sorted(set(value))
            elif key != "os_hidden":
                setattr(req, key, value if value is not None else "")
        elif op["op"] == "remove":
            if key not in image.properties:
                raise ApiError(409, f"Property {shorten(key)} does not exist.")
            req.remove_properties.append(key)
        else:
            if not isinstance(op["value"], str):
                raise BadRequest(f"Property {shorten(key)} must be a string.")
            req.set_properties[key] = op["value"]
    reply = await call_image(gateway_of(request).conductor.images.UpdateImage, req)
    return JSONResponse(views.image(reply.image))


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def delete_image(request: Request) -> Response:
    """Delete an image and its data."""
    ctx = _ctx(request)
    ctx.require_write("delete_image")
    await delete_with_data(request, ctx, await get_image(request, ctx))
    return Response(status_code=204)


@documented(tag=_TAG, policy=IMAGE_OWNER)
async def upload_image(request: Request) -> Response:
    """Upload the image data (application/octet-stream); the image becomes active."""
    ctx = _ctx(request)
    ctx.require_write("upload_image")
    image = await get_image(request, ctx)
    require_owner(ctx, image)
    if image.status != "queued":
        raise Conflict(f"Image {image.id} is {image.status}: its data cannot be replaced.")
    gw = gateway_of(request)
    # A fresh file name per upload: a failed or racing upload never clobbers live bytes.
    stored = await gw.image_store.write(f"{image.id}-{uuid.uuid4().hex[:8]}", request.stream())
    try:
        await call(
            gw.conductor.images.RecordImageData,
            images_pb2.RecordImageDataRequest(
                request_id=request_id(request),
                id=image.id,
                size=stored.size,
                checksum=stored.checksum,
                os_hash_algo=stored.os_hash_algo,
                os_hash_value=stored.os_hash_value,
                location=stored.location,
            ),
        )
    except ApiError:
        gw.image_store.delete(stored.location)
        raise
    return Response(status_code=204)


@documented(tag=_TAG, policy=READER)
async def download_image(request: Request) -> Response:
    """Download the image data (204 while there is none). A deactivated image's data is
    an admin's only (403)."""
    ctx = _ctx(request)
    ctx.require_read("download_image")
    image = await get_image(request, ctx)
    if image.status == "deactivated" and not ctx.is_admin:
        raise Forbidden(
            "The requested image has been deactivated. Image data download is forbidden."
        )
    gw = gateway_of(request)
    path = gw.image_store.path_of(image.location) if image.location else None
    if image.status not in ("active", "deactivated") or path is None:
        return Response(status_code=204)
    return StreamingResponse(
        gw.image_store.read(path),
        media_type="application/octet-stream",
        headers={"Content-MD5": image.checksum, "Content-Length": str(image.size)},
    )


@documented(tag=_TAG, policy=PUBLIC)
async def image_schema(request: Request) -> Response:
    """A minimal image schema document (clients fetch it to learn the properties)."""
    return JSONResponse(_IMAGE_SCHEMA)


@documented(tag=_TAG, policy=PUBLIC)
async def images_schema(request: Request) -> Response:
    """A minimal image list schema document."""
    return JSONResponse(
        {
            "name": "images",
            "properties": {
                "images": {"type": "array", "items": _IMAGE_SCHEMA},
                "schema": {"type": "string"},
                "first": {"type": "string"},
                "next": {"type": "string"},
            },
            "links": [
                {"rel": "first", "href": "{first}"},
                {"rel": "next", "href": "{next}"},
                {"rel": "describedby", "href": "{schema}"},
            ],
        }
    )


def routes() -> list[BaseRoute]:
    p = "/image/v2/images"
    return [
        Route("/image", versions, methods=["GET"]),
        Route("/image/", versions, methods=["GET"]),
        Route("/image/versions", versions, methods=["GET"]),
        Route("/image/v2", versions, methods=["GET"]),
        Route("/image/v2/", versions, methods=["GET"]),
        Route("/image/v2/schemas/image", image_schema, methods=["GET"]),
        Route("/image/v2/schemas/images", images_schema, methods=["GET"]),
        Route(p, list_images, methods=["GET"]),
        Route(p, create_image, methods=["POST"]),
        Route(p + "/{image_id}", show_image, methods=["GET"]),
        Route(p + "/{image_id}", update_image, methods=["PATCH"]),
        Route(p + "/{image_id}", delete_image, methods=["DELETE"]),
        Route(p + "/{image_id}/file", upload_image, methods=["PUT"]),
        Route(p + "/{image_id}/file", download_image, methods=["GET"]),
        Route(p + "/{image_id}/tasks", image_tasks, methods=["GET"]),
        *members.routes(),
        *tags.routes(),
        *activation.routes(),
    ]
