"""The compute API's image proxy, up to microversion 2.35 (from 2.36 these routes are gone,
404, as the API removed them): the image service's images in the compute API's shape, and
their metadata, which is the image's properties. Reads and writes go to the image service
under the caller's project, with its rules (only an image's owner, or an admin, changes
or deletes it)."""

from __future__ import annotations

import re
from typing import Any

from loom.image.v1 import images_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext
from gateway.compute.common import API, COMPUTE, context, empty, next_link, ok
from gateway.compute.views_time import iso_z
from gateway.conductor import call
from gateway.errors import BadRequest, NotFound
from gateway.image.access import delete_with_data, require_owner, scope
from gateway.microversion import Microversion
from gateway.routing import IMAGE_OWNER, READER, checked_body, checked_query, documented
from gateway.state import base_url, gateway_of, json_body, microversion, request_id
from gateway.validation import Query, QueryParam, compile_schema

LAST = Microversion(2, 35)
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}$")
_STATUS = {
    "active": "ACTIVE",
    "queued": "SAVING",
    "saving": "SAVING",
    "uploading": "SAVING",
    "importing": "SAVING",
    "deleted": "DELETED",
    "pending_delete": "DELETED",
    "killed": "ERROR",
}
_PROGRESS = {"queued": 25, "saving": 50, "uploading": 50, "importing": 50, "active": 100}
LIST_QUERY = Query(
    QueryParam("name"),
    QueryParam("status"),
    QueryParam("server"),
    QueryParam("type"),
    QueryParam("minRam", "nonneg_integer"),
    QueryParam("minDisk", "nonneg_integer"),
    QueryParam("changes-since", "datetime"),
    QueryParam("limit", "nonneg_integer"),
    QueryParam("marker"),
)
_VALUE = {"type": "string", "maxLength": 255}
_KEY = "^[a-zA-Z0-9-_:. ]{1,255}$"
METADATA = compile_schema(
    {
        "type": "object",
        "required": ["metadata"],
        "additionalProperties": False,
        "properties": {
            "metadata": {
                "type": "object",
                "patternProperties": {_KEY: _VALUE},
                "additionalProperties": False,
            }
        },
    }
)
META_ITEM = compile_schema(
    {
        "type": "object",
        "required": ["meta"],
        "additionalProperties": False,
        "properties": {
            "meta": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "patternProperties": {_KEY: _VALUE},
                "additionalProperties": False,
            }
        },
    }
)


def _ctx(request: Request) -> RequestContext:
    if microversion(request) > LAST:
        raise NotFound("The resource could not be found.")
    ctx = context(request)
    ctx.require_read("os_compute_api:images")
    return ctx


def _writer(request: Request) -> RequestContext:
    """The caller of a change: a member (or admin), as the image API asks of the same
    change; whether the image is theirs is checked once it is found."""
    ctx = _ctx(request)
    ctx.require_write("os_compute_api:images")
    return ctx


def _links(request: Request, image_id: str) -> list[dict[str, str]]:
    base = base_url(request)
    return [
        {"href": f"{base}{API}/images/{image_id}", "rel": "self"},
        {"href": f"{base}{COMPUTE}/images/{image_id}", "rel": "bookmark"},
        {
            "href": f"{base}/image/v2/images/{image_id}",
            "rel": "alternate",
            "type": "application/vnd.openstack.image",
        },
    ]


def _detail(request: Request, i: images_pb2.Image) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": i.id,
        "name": i.name or None,
        "created": iso_z(i.created_at) if i.HasField("created_at") else None,
        "updated": iso_z(i.updated_at) if i.HasField("updated_at") else None,
        "status": _STATUS.get(i.status, "UNKNOWN"),
        "progress": _PROGRESS.get(i.status, 0),
        "minDisk": i.min_disk,
        "minRam": i.min_ram,
        "metadata": dict(i.properties),
        "OS-EXT-IMG-SIZE:size": i.size,
        "links": _links(request, i.id),
    }
    server = i.properties.get("instance_uuid")
    if server:
        body["server"] = {
            "id": server,
            "links": [
                {"href": f"{base_url(request)}{API}/servers/{server}", "rel": "self"},
                {"href": f"{base_url(request)}{COMPUTE}/servers/{server}", "rel": "bookmark"},
            ],
        }
    return body


def _brief(request: Request, i: images_pb2.Image) -> dict[str, Any]:
    return {"id": i.id, "name": i.name or None, "links": _links(request, i.id)}


async def _all(request: Request, ctx: RequestContext, name: str) -> list[images_pb2.Image]:
    images: list[images_pb2.Image] = []
    marker = ""
    while True:
        reply = await call(
            gateway_of(request).conductor.images.ListImages,
            images_pb2.ListImagesRequest(
                project_id=scope(ctx), name=name, limit=1000, marker=marker
            ),
        )
        images.extend(reply.images)
        if not reply.next_marker:
            return images
        marker = reply.next_marker


def _matches(i: images_pb2.Image, q: dict[str, Any]) -> bool:
    if "status" in q and _STATUS.get(i.status, "UNKNOWN") != q["status"].upper():
        return False
    # `server` may be a server's link (its href): the id is its last segment, as in Nova.
    if "server" in q and i.properties.get("instance_uuid") != q["server"].rsplit("/", 1)[-1]:
        return False
    if "type" in q and i.properties.get("image_type", "") != q["type"]:
        return False
    if "minRam" in q and i.min_ram < q["minRam"]:
        return False
    if "minDisk" in q and i.min_disk < q["minDisk"]:
        return False
    return "changes-since" not in q or (
        i.HasField("updated_at")
        and i.updated_at.ToDatetime(tzinfo=q["changes-since"].tzinfo) >= q["changes-since"]
    )


async def _list(request: Request, detailed: bool) -> Response:
    ctx = _ctx(request)
    q = checked_query(request, LIST_QUERY)
    found = [i for i in await _all(request, ctx, q.get("name", "")) if _matches(i, q)]
    if "marker" in q:
        ids = [i.id for i in found]
        if q["marker"] not in ids:
            raise BadRequest(f"marker [{q['marker']}] not found")
        found = found[ids.index(q["marker"]) + 1 :]
    limit = min(q.get("limit", 1000), 1000)
    page, more = found[:limit], len(found) > limit
    view = _detail if detailed else _brief
    body: dict[str, Any] = {"images": [view(request, i) for i in page]}
    if more and page:
        body["images_links"] = next_link(
            request, "images/detail" if detailed else "images", page[-1].id, limit
        )
    return ok(body)


@documented(query=LIST_QUERY, tag="compute", policy=READER)
async def list_images(request: Request) -> Response:
    """Images (id, name, links), up to 2.35."""
    return await _list(request, detailed=False)


@documented(query=LIST_QUERY, tag="compute", policy=READER)
async def list_images_detail(request: Request) -> Response:
    """Images with their status, sizes and metadata, up to 2.35."""
    return await _list(request, detailed=True)


async def _get(request: Request, ctx: RequestContext) -> images_pb2.Image:
    if not _UUID.match(request.path_params["image_id"]):
        raise NotFound("Image not found.")
    reply = await call(
        gateway_of(request).conductor.images.GetImage,
        images_pb2.GetImageRequest(id=request.path_params["image_id"], project_id=scope(ctx)),
    )
    image: images_pb2.Image = reply.image
    return image


@documented(tag="compute", policy=READER)
async def show_image(request: Request) -> Response:
    """One image, up to 2.35."""
    ctx = _ctx(request)
    return ok({"image": _detail(request, await _get(request, ctx))})


@documented(tag="compute", policy=IMAGE_OWNER)
async def delete_image(request: Request) -> Response:
    """Delete an image and its data (its owner or an admin), up to 2.35."""
    ctx = _writer(request)
    await delete_with_data(request, ctx, await _get(request, ctx))
    return empty(204)


async def _set_properties(
    request: Request,
    ctx: RequestContext,
    image: images_pb2.Image,
    values: dict[str, str],
    remove: list[str],
) -> dict[str, str]:
    require_owner(ctx, image)
    reply = await call(
        gateway_of(request).conductor.images.UpdateImage,
        images_pb2.UpdateImageRequest(
            request_id=request_id(request),
            id=image.id,
            project_id=scope(ctx),
            set_properties=values,
            remove_properties=remove,
        ),
    )
    return dict(reply.image.properties)


@documented(tag="compute", policy=READER)
async def show_metadata(request: Request) -> Response:
    """An image's metadata (its properties), up to 2.35."""
    ctx = _ctx(request)
    return ok({"metadata": dict((await _get(request, ctx)).properties)})


@documented(body=METADATA, tag="compute", policy=IMAGE_OWNER)
async def replace_metadata(request: Request) -> Response:
    """Replace an image's metadata, up to 2.35."""
    ctx = _writer(request)
    body = await json_body(request)
    checked_body(METADATA, body)
    image = await _get(request, ctx)
    new = body["metadata"]
    gone = [k for k in image.properties if k not in new]
    return ok({"metadata": await _set_properties(request, ctx, image, new, gone)})


@documented(body=METADATA, tag="compute", policy=IMAGE_OWNER)
async def update_metadata(request: Request) -> Response:
    """Add to or change an image's metadata, up to 2.35."""
    ctx = _writer(request)
    body = await json_body(request)
    checked_body(METADATA, body)
    image = await _get(request, ctx)
    return ok({"metadata": await _set_properties(request, ctx, image, body["metadata"], [])})


@documented(tag="compute", policy=READER)
async def show_metadata_item(request: Request) -> Response:
    """One metadata item of an image, up to 2.35."""
    ctx = _ctx(request)
    key = request.path_params["key"]
    props = (await _get(request, ctx)).properties
    if key not in props:
        raise NotFound("Metadata item was not found")
    return ok({"meta": {key: props[key]}})


@documented(body=META_ITEM, tag="compute", policy=IMAGE_OWNER)
async def set_metadata_item(request: Request) -> Response:
    """Set one metadata item of an image, up to 2.35."""
    ctx = _writer(request)
    key = request.path_params["key"]
    body = await json_body(request)
    checked_body(META_ITEM, body)
    if key not in body["meta"]:
        raise BadRequest("Request body and URI mismatch")
    image = await _get(request, ctx)
    value = body["meta"][key]
    await _set_properties(request, ctx, image, {key: value}, [])
    return ok({"meta": {key: value}})


@documented(tag="compute", policy=IMAGE_OWNER)
async def delete_metadata_item(request: Request) -> Response:
    """Remove one metadata item of an image, up to 2.35."""
    ctx = _writer(request)
    key = request.path_params["key"]
    image = await _get(request, ctx)
    if key not in image.properties:
        raise NotFound("Metadata item was not found")
    await _set_properties(request, ctx, image, {}, [key])
    return empty(204)


def routes() -> list[BaseRoute]:
    p = API + "/images"
    m = p + "/{image_id}/metadata"
    return [
        Route(p, list_images, methods=["GET"]),
        Route(p + "/detail", list_images_detail, methods=["GET"]),
        Route(p + "/{image_id}", show_image, methods=["GET"]),
        Route(p + "/{image_id}", delete_image, methods=["DELETE"]),
        Route(m, show_metadata, methods=["GET"]),
        Route(m, replace_metadata, methods=["PUT"]),
        Route(m, update_metadata, methods=["POST"]),
        Route(m + "/{key}", show_metadata_item, methods=["GET"]),
        Route(m + "/{key}", set_metadata_item, methods=["PUT"]),
        Route(m + "/{key}", delete_metadata_item, methods=["DELETE"]),
    ]
