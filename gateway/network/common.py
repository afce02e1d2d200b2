"""What every Network v2 handler shares: the caller and its scope, calls with the domain's
error types, Neutron's list conventions (filters by attribute, `fields`, sorting, `limit`/
`marker` paging with links) and its timestamps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC
from typing import Any, TypeVar
from urllib.parse import urlencode

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from loom.network.v1 import network_pb2 as pb
from loom.network.v1 import network_pb2_grpc
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.context import RequestContext, authenticate
from gateway.compute.common import ok
from gateway.conductor import DEFAULT_DEADLINE_S
from gateway.errors import BadRequest, TypedApiError, from_grpc
from gateway.state import base_url, gateway_of, json_body, request_id
from gateway.validation import CompiledSchema, ValidationFailed

API = "/network/v2.0"
# The /openapi.json tag of every Network v2.0 operation.
TAG = "network"
# The trailing metadata in which the network service names a failure's type.
ERROR_TYPE_KEY = "loom-error-type"
# Past this many items a page is cut (as a list without a limit would be unbounded).
MAX_PAGE = 1000

Resp = TypeVar("Resp")

_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    # Neutron answers a quota failure with 409 OverQuota.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 409,
}


class NeutronError(TypedApiError):
    """An error with Neutron's `type` (NetworkNotFound, IpAddressAlreadyAllocated...)."""


def context(request: Request) -> RequestContext:
    return authenticate(request, gateway_of(request).signer)


def stub(request: Request) -> network_pb2_grpc.NetworkServiceStub:
    """The network service's stub on the gateway's channel to it."""
    network: network_pb2_grpc.NetworkServiceStub = gateway_of(request).conductor.network
    return network


def scope(ctx: RequestContext) -> pb.Scope:
    return pb.Scope(project_id=ctx.project_id, is_admin=ctx.is_admin)


async def call(method: Callable[..., Awaitable[Resp]], request: Any) -> Resp:
    """Calls one NetworkService RPC; a failure becomes a NeutronError of its type."""
    try:
        return await method(request, timeout=DEFAULT_DEADLINE_S)
    except grpc.aio.AioRpcError as exc:
        status = _STATUS.get(exc.code())
        if status is None:
            raise from_grpc(exc.code(), exc.details() or "") from exc
        error_type = next(
            (str(v) for k, v in (exc.trailing_metadata() or ()) if k == ERROR_TYPE_KEY),
            "",
        )
        raise NeutronError(status, exc.details() or "", error_type) from exc


def iso(ts: Timestamp) -> str:
    return ts.ToDatetime(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def project_fields(project_id: str) -> dict[str, str]:
    return {"tenant_id": project_id, "project_id": project_id}


# The most resources one bulk create makes (one transaction holds them all).
MAX_BULK = 100


async def resource_body(request: Request, key: str, schema: CompiledSchema) -> dict[str, Any]:
    """The `{key: {...}}` body, checked against the object's schema (unknown attributes are
    refused by name), with tenant_id folded into project_id."""
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], dict):
        raise BadRequest(f"Resource body required with key '{key}'.")
    return _checked_item(body[key], schema)


async def resource_bodies(
    request: Request, key: str, schema: CompiledSchema
) -> tuple[list[dict[str, Any]], bool]:
    """A create's body: `{key: {...}}`, or a bulk create's `{key + "s": [{...}, ...]}` (at
    least one, at most MAX_BULK), each item checked as resource_body checks one. Returns
    the items and whether the body was a bulk one."""
    body = await json_body(request)
    plural = f"{key}s"
    if isinstance(body, dict) and set(body) == {plural}:
        items = body[plural]
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            raise BadRequest(f"Resources required: '{plural}' must be a list of objects.")
        if len(items) > MAX_BULK:
            raise BadRequest(f"Too many {plural} in one request: at most {MAX_BULK}.")
        return [_checked_item(i, schema) for i in items], True
    if not isinstance(body, dict) or set(body) != {key} or not isinstance(body[key], dict):
        raise BadRequest(f"Resource body required with key '{key}' or '{plural}'.")
    return [_checked_item(body[key], schema)], False


def _checked_item(item: dict[str, Any], schema: CompiledSchema) -> dict[str, Any]:
    if not encodable(item):
        raise BadRequest("Malformed request body: strings must be valid UTF-8.")
    unknown = sorted(set(item) - set(schema.schema["properties"]))
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(u[:64] for u in unknown)[:200]}'")
    try:
        schema.validate(item)
    except ValidationFailed as exc:
        raise BadRequest(f"Invalid input for operation: {exc}") from None
    tenant, project = item.pop("tenant_id", None), item.get("project_id")
    if tenant is not None:
        if project is not None and project != tenant:
            raise BadRequest("Invalid input: tenant_id and project_id do not match.")
        item["project_id"] = tenant
    return item


async def created(
    request: Request,
    key: str,
    items: Sequence[Any],
    bulk: bool,
    *,
    one: Any,
    many: Any,
    many_request: Callable[[Sequence[Any]], Any],
    view: Callable[[Any], dict[str, Any]],
) -> Response:
    """The 201 of a create: `{key: ...}` made by `one`, or for a bulk body all the items
    made by `many` in one call (`{key + "s": [...]}`, in order)."""
    if bulk:
        made = await call(many, many_request(items))
        return ok({f"{key}s": [view(x) for x in getattr(made, f"{key}s")]}, 201)
    reply = await call(one, items[0])
    return ok({key: view(getattr(reply, key))}, 201)


def item_request_id(request: Request, index: int, bulk: bool) -> str:
    """The request id of one resource of a create: a bulk create's items each have their
    own (so a retried bulk finds each item its first attempt made)."""
    rid = request_id(request)
    return f"{rid}/{index}" if bulk and rid else rid


def encodable(value: Any) -> bool:
    """JSON may carry a lone surrogate (\ud800), which no protobuf string can hold."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(encodable(k) and encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(encodable(v) for v in value)
    return True


# ------------------------------------------------------------------ lists

_PAGING = ("fields", "limit", "marker", "sort_key", "sort_dir", "page_reverse")


def _matches(item: Mapping[str, Any], key: str, wanted: list[str]) -> bool:
    value = item.get(key)
    if isinstance(value, bool):
        return any(
            w.lower() in ("true", "1") if value else w.lower() in ("false", "0") for w in wanted
        )
    if value is None:
        return any(w in ("", "None", "null") for w in wanted)
    if isinstance(value, list | dict):
        raise BadRequest(f"Filtering by '{key}' is not supported.")
    return str(value) in wanted


def _fixed_ips_match(item: Mapping[str, Any], wanted: list[str]) -> bool:
    """`fixed_ips=ip_address=10.0.0.5` and `fixed_ips=subnet_id=...`: every one must hold."""
    for w in wanted:
        key, sep, value = w.partition("=")
        if not sep or key not in ("ip_address", "subnet_id"):
            raise BadRequest(f"Invalid fixed_ips filter '{w[:64]}'")
        if not any(f.get(key) == value for f in item.get("fixed_ips", [])):
            return False
    return True


# Fetches one page by id from the network service: (limit, marker) -> items; (0, "") is all.
Fetch = Callable[[int, str], Awaitable[list[dict[str, Any]]]]


async def listing(
    request: Request,
    collection: str,
    fetch: Fetch,
    *,
    attrs: Iterable[str],
    in_service: Iterable[str] = (),
) -> Response:
    """A list answer: filtered by any attribute, sorted, paged and cut to `fields`.

    A plain page (no sorting, only filters the service applies itself, `in_service`) is
    read from the service a page at a time; anything else is read whole and filtered,
    sorted and paged here."""
    params = request.query_params
    known = set(attrs)
    for name in params:
        if name not in known and name not in _PAGING:
            raise BadRequest(f"[{name[:64]}] is invalid attribute for filtering")
    filters = [name for name in params if name not in _PAGING]
    service_side = set(in_service)
    plain = not any(n in params for n in ("sort_key", "sort_dir", "page_reverse")) and all(
        n in service_side and len(params.getlist(n)) == 1 for n in filters
    )
    limit = _limit(params.get("limit"))
    marker = params.get("marker")
    if plain:
        # One more than the page: whether a next page exists.
        out = await fetch(limit + 1, marker or "")
    else:
        out = _filtered_and_sorted(request, await fetch(0, ""), known)
        if marker:
            index = next((n for n, i in enumerate(out) if i["id"] == marker), None)
            if index is None:
                raise NeutronError(404, f"Marker {marker[:64]} could not be found.", "HTTPNotFound")
            out = out[index + 1 :]
    body: dict[str, Any] = {}
    if len(out) > limit:
        out = out[:limit]
        body[f"{collection}_links"] = [
            {"rel": "next", "href": _page_link(request, collection, out[-1]["id"], limit)}
        ]
    fields = params.getlist("fields")
    if fields:
        out = [{k: v for k, v in i.items() if k in fields} for i in out]
    body[collection] = out
    return ok(body)


def _filtered_and_sorted(
    request: Request, items: list[dict[str, Any]], known: set[str]
) -> list[dict[str, Any]]:
    params = request.query_params
    out = items
    for name in params:
        if name in _PAGING:
            continue
        wanted = params.getlist(name)
        if name == "fixed_ips":
            out = [i for i in out if _fixed_ips_match(i, wanted)]
        else:
            out = [i for i in out if _matches(i, name, wanted)]
    sort_keys = params.getlist("sort_key") or ["id"]
    sort_dirs = params.getlist("sort_dir") or ["asc"] * len(sort_keys)
    if len(sort_dirs) != len(sort_keys) or any(d not in ("asc", "desc") for d in sort_dirs):
        raise BadRequest("The number of sort_keys and sort_dirs must be same")
    for key, direction in reversed(list(zip(sort_keys, sort_dirs, strict=True))):
        if key not in known:
            raise BadRequest(f"{key[:64]} is invalid attribute for sort_keys")
        out.sort(key=_sort_key(key), reverse=direction == "desc")
    return out


def _sort_key(key: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    """Absent values last; numbers and strings by their text."""

    def of(item: dict[str, Any]) -> tuple[bool, str]:
        value = item.get(key)
        return value is None, str(value)

    return of


def _limit(text: str | None) -> int:
    """The page size: as asked, at most MAX_PAGE (also without `limit`, so no answer is
    unbounded; a longer list gets a next link)."""
    if text is None:
        return MAX_PAGE
    if not text.isdigit():
        raise BadRequest(f"Limit must be an integer 0 or greater and not '{text[:20]}'")
    value = int(text[:10])
    return MAX_PAGE if value == 0 else min(value, MAX_PAGE)


def _page_link(request: Request, collection: str, marker: str, limit: int) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("marker", "limit")]
    params += [("limit", str(limit)), ("marker", marker)]
    return f"{base_url(request)}{API}/{collection}?{urlencode(params)}"


def one(request: Request, key: str, item: dict[str, Any]) -> Response:
    """A show answer, cut to `fields` when asked."""
    fields = request.query_params.getlist("fields")
    if fields:
        item = {k: v for k, v in item.items() if k in fields}
    return ok({key: item})


async def get_by_id(request: Request, policy: str, rpc: str) -> Any:
    """The reply to a read of one resource by the id in its path: the caller must be
    allowed `policy`; the NetworkService method `rpc` (with its request message of the same
    name) finds it in the caller's scope (NotFound otherwise)."""
    ctx = context(request)
    ctx.require_read(policy)
    message = getattr(pb, f"{rpc}Request")
    return await call(
        getattr(stub(request), rpc), message(scope=scope(ctx), id=request.path_params["id"])
    )


async def delete_by_id(request: Request, policy: str, rpc: str) -> Response:
    """A DELETE of one resource by the id in its path: the caller must be allowed `policy`;
    the NetworkService method `rpc` (with its request message of the same name) deletes it
    in the caller's scope; 204."""
    ctx = context(request)
    ctx.require_write(policy)
    message = getattr(pb, f"{rpc}Request")
    await call(
        getattr(stub(request), rpc),
        message(request_id=request_id(request), scope=scope(ctx), id=request.path_params["id"]),
    )
    return Response(status_code=204)
