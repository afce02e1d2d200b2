"""os-aggregates (admin only): list, create, show, update, delete, and the add_host,
remove_host and set_metadata actions, translated to the scheduler's AggregatesService.

Shapes as Nova's API gives them: `uuid` from 2.41; a create answers without `hosts` and
`metadata`; timestamps with microseconds and no zone; `deleted`/`deleted_at` always false
and null. Image pre-caching (POST .../images, 2.81) is refused with 501: Loom's hosts
fetch an image on its first boot there.
"""

from __future__ import annotations

from typing import Any

from loom.scheduler.v1 import aggregates_pb2
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.compute.common import context, ok
from gateway.compute.views_time import iso_micro
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.microversion import Microversion
from gateway.routing import ADMIN, checked_body, documented
from gateway.scheduler import Scheduler
from gateway.state import gateway_of, json_body, microversion, request_id
from gateway.validation import action_schema, compile_schema

_NAME = {"type": "string", "minLength": 1, "maxLength": 255, "format": "name"}
_ZONE = {"type": ["string", "null"], "minLength": 1, "maxLength": 255}
_HOST = {"type": "string", "minLength": 1, "maxLength": 255}

CREATE = compile_schema(
    {
        "type": "object",
        "required": ["aggregate"],
        "additionalProperties": False,
        "properties": {
            "aggregate": {
                "type": "object",
                "required": ["name"],
                "additionalProperties": False,
                "properties": {"name": _NAME, "availability_zone": _ZONE},
            }
        },
    }
)
UPDATE = compile_schema(
    {
        "type": "object",
        "required": ["aggregate"],
        "additionalProperties": False,
        "properties": {
            "aggregate": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": False,
                "properties": {"name": _NAME, "availability_zone": _ZONE},
            }
        },
    }
)


ADD_HOST = compile_schema(action_schema("add_host", {"host": _HOST}))
REMOVE_HOST = compile_schema(action_schema("remove_host", {"host": _HOST}))
SET_METADATA = compile_schema(
    action_schema(
        "set_metadata",
        {
            "metadata": {
                "type": "object",
                "patternProperties": {
                    "^[a-zA-Z0-9-_:. ]{1,255}$": {"type": ["string", "null"], "maxLength": 255}
                },
                "additionalProperties": False,
            }
        },
    )
)
ACTIONS = {"add_host": ADD_HOST, "remove_host": REMOVE_HOST, "set_metadata": SET_METADATA}


def view(
    agg: aggregates_pb2.Aggregate, mv: Microversion, *, created: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "availability_zone": agg.availability_zone or None,
        "created_at": iso_micro(agg.created_at),
        "deleted": False,
        "deleted_at": None,
        "id": agg.id,
        "name": agg.name,
        "updated_at": iso_micro(agg.updated_at),
    }
    if not created:
        body["hosts"] = list(agg.hosts)
        body["metadata"] = dict(agg.metadata)
    if mv.at_least("2.41"):
        body["uuid"] = agg.uuid
    return body


def _scheduler(request: Request) -> Scheduler:
    sched = gateway_of(request).scheduler
    if sched is None:
        raise ApiError(503, "The scheduler is not configured for this gateway.")
    return sched


def _aggregate_id(request: Request) -> int:
    raw = request.path_params["aggregate_id"]
    if not raw.isdigit() or int(raw) <= 0 or int(raw) >= 2**63:
        raise NotFound(f"Aggregate {raw[:64]} could not be found.")
    return int(raw)


@documented(tag="compute", policy=ADMIN)
async def list_aggregates(request: Request) -> Response:
    """Every host aggregate (admin)."""
    context(request).require_admin("os_compute_api:os-aggregates:index")
    reply = await call(
        _scheduler(request).aggregates.ListAggregates, aggregates_pb2.ListAggregatesRequest()
    )
    mv = microversion(request)
    return ok({"aggregates": [view(a, mv) for a in reply.aggregates]})


@documented(body=CREATE, tag="compute", policy=ADMIN)
async def create_aggregate(request: Request) -> Response:
    """Create a host aggregate, a zone when given `availability_zone` (admin)."""
    context(request).require_admin("os_compute_api:os-aggregates:create")
    body = await json_body(request)
    checked_body(CREATE, body)
    agg = body["aggregate"]
    reply = await call(
        _scheduler(request).aggregates.CreateAggregate,
        aggregates_pb2.CreateAggregateRequest(
            request_id=request_id(request),
            name=agg["name"].strip(),
            availability_zone=(agg.get("availability_zone") or "").strip(),
        ),
    )
    return ok({"aggregate": view(reply.aggregate, microversion(request), created=True)})


@documented(tag="compute", policy=ADMIN)
async def show_aggregate(request: Request) -> Response:
    """One host aggregate with its hosts and metadata (admin)."""
    context(request).require_admin("os_compute_api:os-aggregates:show")
    reply = await call(
        _scheduler(request).aggregates.GetAggregate,
        aggregates_pb2.GetAggregateRequest(id=_aggregate_id(request)),
    )
    return ok({"aggregate": view(reply.aggregate, microversion(request))})


@documented(body=UPDATE, tag="compute", policy=ADMIN)
async def update_aggregate(request: Request) -> Response:
    """Rename a host aggregate and/or change its zone (admin)."""
    context(request).require_admin("os_compute_api:os-aggregates:update")
    agg_id = _aggregate_id(request)
    body = await json_body(request)
    checked_body(UPDATE, body)
    changes = body["aggregate"]
    req = aggregates_pb2.UpdateAggregateRequest(request_id=request_id(request), id=agg_id)
    if "name" in changes:
        req.name = changes["name"].strip()
    if "availability_zone" in changes:
        # null removes the zone.
        req.availability_zone = (changes["availability_zone"] or "").strip()
    reply = await call(_scheduler(request).aggregates.UpdateAggregate, req)
    return ok({"aggregate": view(reply.aggregate, microversion(request))})


@documented(tag="compute", policy=ADMIN)
async def delete_aggregate(request: Request) -> Response:
    """Delete an empty host aggregate (admin)."""
    context(request).require_admin("os_compute_api:os-aggregates:delete")
    await call(
        _scheduler(request).aggregates.DeleteAggregate,
        aggregates_pb2.DeleteAggregateRequest(
            request_id=request_id(request), id=_aggregate_id(request)
        ),
    )
    return Response(status_code=200)


@documented(tag="compute", policy=ADMIN)
async def aggregate_action(request: Request) -> Response:
    """add_host, remove_host or set_metadata (admin)."""
    ctx = context(request)
    agg_id = _aggregate_id(request)
    body = await json_body(request)
    named = next(iter(body), "") if isinstance(body, dict) and len(body) == 1 else ""
    # The policy before the body: whoever may not act learns nothing of its shape.
    ctx.require_admin(f"os_compute_api:os-aggregates:{named if named in ACTIONS else 'action'}")
    if named not in ACTIONS:
        raise BadRequest(
            "The action body must hold exactly one of add_host, remove_host, set_metadata."
        )
    action = named
    checked_body(ACTIONS[action], body)
    stubs = _scheduler(request).aggregates
    rid = request_id(request)
    reply: Any
    if action == "add_host":
        reply = await call(
            stubs.AddHost,
            aggregates_pb2.AddHostRequest(request_id=rid, id=agg_id, host=body["add_host"]["host"]),
        )
    elif action == "remove_host":
        reply = await call(
            stubs.RemoveHost,
            aggregates_pb2.RemoveHostRequest(
                request_id=rid, id=agg_id, host=body["remove_host"]["host"]
            ),
        )
    else:
        metadata: dict[str, str | None] = body["set_metadata"]["metadata"]
        reply = await call(
            stubs.SetMetadata,
            aggregates_pb2.SetMetadataRequest(
                request_id=rid,
                id=agg_id,
                set={k: v for k, v in metadata.items() if v is not None},
                delete=[k for k, v in metadata.items() if v is None],
            ),
        )
    return ok({"aggregate": view(reply.aggregate, microversion(request))})


@documented(tag="compute", policy=ADMIN)
async def cache_images(request: Request) -> Response:
    """Image pre-caching on an aggregate's hosts (2.81): not supported, said plainly."""
    context(request).require_admin("os_compute_api:os-aggregates:images")
    if not microversion(request).at_least("2.81"):
        raise NotFound("The resource could not be found.")
    _aggregate_id(request)
    raise ApiError(
        501,
        "Loom does not pre-cache images on an aggregate's hosts: each host fetches an "
        "image when it first boots a server from it.",
    )


def routes() -> list[BaseRoute]:
    base = "/compute/v2.1/os-aggregates"
    return [
        Route(base, list_aggregates, methods=["GET"]),
        Route(base, create_aggregate, methods=["POST"]),
        Route(base + "/{aggregate_id}", show_aggregate, methods=["GET"]),
        Route(base + "/{aggregate_id}", update_aggregate, methods=["PUT"]),
        Route(base + "/{aggregate_id}", delete_aggregate, methods=["DELETE"]),
        Route(base + "/{aggregate_id}/action", aggregate_action, methods=["POST"]),
        Route(base + "/{aggregate_id}/images", cache_images, methods=["POST"]),
    ]
