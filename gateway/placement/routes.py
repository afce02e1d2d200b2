"""Placement API reads at /placement: resource providers with their inventories, usages,
aggregates, traits and allocations; a consumer's allocations; a project's usages; the
resource classes and traits there are. Admin only, as placement's default policy.

Read-only: the scheduler writes inventories (from the agents' reports) and allocations (its
claims), so any write here answers 405. Shapes are placement's at the negotiated
microversion (gateway/placement/version.py); errors are placement's `{"errors": [...]}`.
"""

from __future__ import annotations

from typing import Any

from loom.scheduler.v1 import providers_pb2, providers_pb2_grpc
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext, authenticate
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, NotFound
from gateway.placement import version
from gateway.routing import ADMIN, PUBLIC, checked_query, documented
from gateway.state import gateway_of
from gateway.validation import Query, QueryParam

PLACEMENT = "/placement"
_TAG = "placement"
RESOURCE_CLASSES = ("VCPU", "MEMORY_MB", "DISK_GB")
_RESOURCE_FIELDS = {"VCPU": "vcpus", "MEMORY_MB": "memory_mb", "DISK_GB": "disk_gb"}

PROVIDERS_QUERY = Query(
    QueryParam("name", "string"),
    QueryParam("uuid", "string"),
    QueryParam("member_of", "string"),
    QueryParam("in_tree", "string"),
    QueryParam("resources", "string"),
    QueryParam("required", "string"),
)
USAGES_QUERY = Query(QueryParam("project_id", "string"), QueryParam("user_id", "string"))


def _stub(request: Request) -> providers_pb2_grpc.ResourceProvidersServiceStub:
    sched = gateway_of(request).scheduler
    if sched is None:
        raise ApiError(503, "The scheduler is not configured for this gateway.")
    return sched.providers


def _admin(
    request: Request, action: str, since: tuple[int, int] = version.MIN
) -> tuple[RequestContext, tuple[int, int]]:
    """The caller (an admin) and the microversion; a route younger than the microversion
    asked for does not exist there (404)."""
    mv = version.requested(request)
    ctx = authenticate(request, gateway_of(request).signer)
    ctx.require_admin(f"placement:{action}")
    if mv < since:
        raise NotFound("The resource could not be found.")
    return ctx, mv


def _json(body: Any, mv: tuple[int, int], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=version.headers(mv))


def _provider_links(request: Request, uuid: str, mv: tuple[int, int]) -> list[dict[str, str]]:
    base = f"{PLACEMENT}/resource_providers/{uuid}"
    links = [{"href": base, "rel": "self"}]
    if mv >= (1, 1):
        links.append({"href": f"{base}/aggregates", "rel": "aggregates"})
    links += [
        {"href": f"{base}/inventories", "rel": "inventories"},
        {"href": f"{base}/usages", "rel": "usages"},
    ]
    if mv >= (1, 6):
        links.append({"href": f"{base}/traits", "rel": "traits"})
    if mv >= (1, 11):
        links.append({"href": f"{base}/allocations", "rel": "allocations"})
    return links


def _provider_view(
    request: Request, rp: providers_pb2.ResourceProvider, mv: tuple[int, int]
) -> dict[str, Any]:
    view: dict[str, Any] = {
        "uuid": rp.uuid,
        "name": rp.name,
        "generation": rp.generation,
        "links": _provider_links(request, rp.uuid, mv),
    }
    if mv >= (1, 14):
        # Every host is a root provider: Loom has no nested providers.
        view["parent_provider_uuid"] = None
        view["root_provider_uuid"] = rp.uuid
    return view


def _inventory_view(inv: providers_pb2.ProviderInventory) -> dict[str, Any]:
    return {
        "total": inv.total,
        "reserved": inv.reserved,
        "min_unit": 1,
        "max_unit": inv.total,
        "step_size": 1,
        "allocation_ratio": inv.allocation_ratio,
    }


def _resources(res: Any) -> dict[str, int]:
    return {rc: int(getattr(res, field)) for rc, field in _RESOURCE_FIELDS.items()}


def _parse_resources(text: str) -> dict[str, int]:
    """`VCPU:2,MEMORY_MB:512` into amounts; 400 for anything else."""
    amounts: dict[str, int] = {}
    for part in text.split(","):
        rc, sep, amount = part.partition(":")
        if not sep or not amount.isdigit() or int(amount) < 1:
            raise BadRequest(
                f"Badly formed resources parameter. Expected resources query string "
                f"parameter in form: ?resources=VCPU:2,MEMORY_MB:1024. Got: {text}."
            )
        if rc not in RESOURCE_CLASSES:
            raise BadRequest(f"Invalid resource class in resources parameter: {rc}.")
        amounts[rc] = int(amount)
    return amounts


def _has_room(rp: providers_pb2.ResourceProvider, amounts: dict[str, int]) -> bool:
    inventories = {inv.resource_class: inv for inv in rp.inventories}
    for rc, amount in amounts.items():
        inv = inventories.get(rc)
        if inv is None:
            return False
        capacity = int(inv.total * inv.allocation_ratio) - inv.reserved
        if inv.used + amount > capacity or amount > inv.total:
            return False
    return True


def _traits_match(required: str) -> bool:
    """Loom's providers have no traits: they meet a `required` list only when every item
    forbids a trait (`!NAME`)."""
    return all(t.strip().startswith("!") for t in required.split(",") if t.strip())


async def _providers(request: Request, **filters: str) -> list[providers_pb2.ResourceProvider]:
    resp = await call(
        _stub(request).ListResourceProviders,
        providers_pb2.ListResourceProvidersRequest(**filters),
    )
    return list(resp.providers)


async def _provider(request: Request) -> providers_pb2.ResourceProvider:
    uuid = request.path_params["uuid"]
    found = await _providers(request, uuid=uuid)
    if not found:
        raise NotFound(f"No resource provider with uuid {uuid} found")
    return found[0]


@documented(tag=_TAG, policy=PUBLIC)
async def root(request: Request) -> Response:
    """The version document (no token needed)."""
    mv = version.requested(request)
    return _json(
        {
            "versions": [
                {
                    "id": "v1.0",
                    "max_version": version.text(version.MAX),
                    "min_version": version.text(version.MIN),
                    "status": "CURRENT",
                    "links": [{"href": "", "rel": "self"}],
                }
            ]
        },
        mv,
    )


@documented(tag=_TAG, query=PROVIDERS_QUERY, policy=ADMIN)
async def list_providers(request: Request) -> Response:
    """Resource providers (every host is one), filtered by name, uuid, aggregate (1.3+),
    tree (1.14+), free resources (1.4+) and required traits (1.18+)."""
    _, mv = _admin(request, "resource_providers:list")
    q = checked_query(request, PROVIDERS_QUERY)
    for param, since in (("member_of", (1, 3)), ("resources", (1, 4)), ("in_tree", (1, 14))):
        if q.get(param) is not None and mv < since:
            raise BadRequest(f"Invalid query string parameters: '{param}' is not allowed")
    if q.get("required") is not None and mv < (1, 18):
        raise BadRequest("Invalid query string parameters: 'required' is not allowed")
    member_of = q.get("member_of") or ""
    if member_of.startswith("in:") or "," in member_of:
        raise BadRequest("member_of with several aggregates is not supported by Loom.")
    uuid = q.get("uuid") or ""
    in_tree = q.get("in_tree") or ""
    if uuid and in_tree and uuid != in_tree:
        return _json({"resource_providers": []}, mv)
    found = await _providers(
        request, uuid=uuid or in_tree, name=q.get("name") or "", member_of=member_of
    )
    if q.get("resources"):
        amounts = _parse_resources(q["resources"])
        found = [rp for rp in found if _has_room(rp, amounts)]
    if q.get("required") is not None and not _traits_match(q["required"]):
        found = []
    return _json({"resource_providers": [_provider_view(request, rp, mv) for rp in found]}, mv)


@documented(tag=_TAG, policy=ADMIN)
async def show_provider(request: Request) -> Response:
    """One resource provider."""
    _, mv = _admin(request, "resource_providers:show")
    return _json(_provider_view(request, await _provider(request), mv), mv)


@documented(tag=_TAG, policy=ADMIN)
async def list_inventories(request: Request) -> Response:
    """A provider's inventory per resource class."""
    _, mv = _admin(request, "resource_providers:inventories:list")
    rp = await _provider(request)
    return _json(
        {
            "inventories": {inv.resource_class: _inventory_view(inv) for inv in rp.inventories},
            "resource_provider_generation": rp.generation,
        },
        mv,
    )


@documented(tag=_TAG, policy=ADMIN)
async def show_inventory(request: Request) -> Response:
    """A provider's inventory of one resource class."""
    _, mv = _admin(request, "resource_providers:inventories:show")
    rp = await _provider(request)
    rc = request.path_params["resource_class"]
    for inv in rp.inventories:
        if inv.resource_class == rc:
            return _json(
                {**_inventory_view(inv), "resource_provider_generation": rp.generation}, mv
            )
    raise NotFound(f"No inventory of class {rc} for {rp.uuid}")


@documented(tag=_TAG, policy=ADMIN)
async def provider_usages(request: Request) -> Response:
    """What is claimed of each resource class on a provider."""
    _, mv = _admin(request, "resource_providers:usages")
    rp = await _provider(request)
    return _json(
        {
            "usages": {inv.resource_class: inv.used for inv in rp.inventories},
            "resource_provider_generation": rp.generation,
        },
        mv,
    )


@documented(tag=_TAG, policy=ADMIN)
async def provider_aggregates(request: Request) -> Response:
    """The host aggregates (UUIDs) a provider is a member of (1.1+)."""
    _, mv = _admin(request, "resource_providers:aggregates:list", since=(1, 1))
    rp = await _provider(request)
    body: dict[str, Any] = {"aggregates": list(rp.aggregate_uuids)}
    if mv >= (1, 19):
        body["resource_provider_generation"] = rp.generation
    return _json(body, mv)


@documented(tag=_TAG, policy=ADMIN)
async def provider_traits(request: Request) -> Response:
    """A provider's traits (1.6+): Loom's hosts carry none."""
    _, mv = _admin(request, "resource_providers:traits:list", since=(1, 6))
    rp = await _provider(request)
    return _json({"traits": [], "resource_provider_generation": rp.generation}, mv)


@documented(tag=_TAG, policy=ADMIN)
async def provider_allocations(request: Request) -> Response:
    """Every consumer's allocation on a provider."""
    _, mv = _admin(request, "resource_providers:allocations:list")
    rp = await _provider(request)
    resp = await call(
        _stub(request).ListConsumerAllocations,
        providers_pb2.ListConsumerAllocationsRequest(provider_uuid=rp.uuid),
    )
    return _json(
        {
            "allocations": {
                a.consumer_id: {"resources": _resources(a.resources)} for a in resp.allocations
            },
            "resource_provider_generation": rp.generation,
        },
        mv,
    )


@documented(tag=_TAG, policy=ADMIN)
async def consumer_allocations(request: Request) -> Response:
    """One consumer's allocations, per provider; empty for an unknown consumer."""
    _, mv = _admin(request, "allocations:list")
    consumer = request.path_params["consumer_uuid"]
    resp = await call(
        _stub(request).ListConsumerAllocations,
        providers_pb2.ListConsumerAllocationsRequest(consumer_id=consumer),
    )
    body: dict[str, Any] = {
        "allocations": {
            a.provider_uuid: {
                "generation": a.provider_generation,
                "resources": _resources(a.resources),
            }
            for a in resp.allocations
        }
    }
    if resp.allocations and mv >= (1, 12):
        body["project_id"] = resp.allocations[0].project_id
        # Claims record the project, not the user: the user is not known here.
        body["user_id"] = None
    return _json(body, mv)


@documented(tag=_TAG, query=USAGES_QUERY, policy=ADMIN)
async def project_usages(request: Request) -> Response:
    """What a project's consumers hold in all, per resource class (1.9+)."""
    _, mv = _admin(request, "usages", since=(1, 9))
    q = checked_query(request, USAGES_QUERY)
    if not q.get("project_id"):
        raise BadRequest("'project_id' is a required property")
    if q.get("user_id"):
        raise BadRequest("Loom's placement records no user per allocation: user_id cannot filter.")
    resp = await call(
        _stub(request).ListConsumerAllocations,
        providers_pb2.ListConsumerAllocationsRequest(project_id=q["project_id"]),
    )
    usages = dict.fromkeys(RESOURCE_CLASSES, 0)
    for a in resp.allocations:
        for rc, amount in _resources(a.resources).items():
            usages[rc] += amount
    return _json({"usages": usages if resp.allocations else {}}, mv)


@documented(tag=_TAG, policy=ADMIN)
async def list_resource_classes(request: Request) -> Response:
    """The resource classes Loom's providers have (1.2+)."""
    _, mv = _admin(request, "resource_classes:list", since=(1, 2))
    return _json(
        {
            "resource_classes": [
                {
                    "name": rc,
                    "links": [{"href": f"{PLACEMENT}/resource_classes/{rc}", "rel": "self"}],
                }
                for rc in RESOURCE_CLASSES
            ]
        },
        mv,
    )


@documented(tag=_TAG, policy=ADMIN)
async def list_traits(request: Request) -> Response:
    """The traits there are (1.6+): none."""
    _, mv = _admin(request, "traits:list", since=(1, 6))
    return _json({"traits": []}, mv)


def routes() -> list[BaseRoute]:
    rp = PLACEMENT + "/resource_providers/{uuid}"
    return [
        Route(PLACEMENT, root, methods=["GET"]),
        Route(PLACEMENT + "/", root, methods=["GET"]),
        Route(PLACEMENT + "/resource_providers", list_providers, methods=["GET"]),
        Route(rp, show_provider, methods=["GET"]),
        Route(rp + "/inventories", list_inventories, methods=["GET"]),
        Route(rp + "/inventories/{resource_class}", show_inventory, methods=["GET"]),
        Route(rp + "/usages", provider_usages, methods=["GET"]),
        Route(rp + "/aggregates", provider_aggregates, methods=["GET"]),
        Route(rp + "/traits", provider_traits, methods=["GET"]),
        Route(rp + "/allocations", provider_allocations, methods=["GET"]),
        Route(PLACEMENT + "/allocations/{consumer_uuid}", consumer_allocations, methods=["GET"]),
        Route(PLACEMENT + "/usages", project_usages, methods=["GET"]),
        Route(PLACEMENT + "/resource_classes", list_resource_classes, methods=["GET"]),
        Route(PLACEMENT + "/traits", list_traits, methods=["GET"]),
    ]
