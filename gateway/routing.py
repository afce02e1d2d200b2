"""Route metadata shared by validation and /openapi.json, so the two never drift.

`@documented(body=..., query=...)` attaches the compiled request schema and the accepted
query parameters to a handler; handlers validate with exactly those objects and the
OpenAPI generator publishes exactly their schemas.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from gateway.validation import NO_QUERY, CompiledSchema, Query, ValidationFailed

Handler = Callable[[Request], Awaitable[Response]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class ApiDoc:
    body: CompiledSchema | None = None
    query: Query = NO_QUERY
    # "compute", "identity" or "image": which auth and error conventions apply.
    tag: str = ""


def documented(
    *, body: CompiledSchema | None = None, query: Query = NO_QUERY, tag: str = ""
) -> Callable[[H], H]:
    def wrap(handler: H) -> H:
        handler.__loom_doc__ = ApiDoc(body=body, query=query, tag=tag)  # type: ignore[attr-defined]
        return handler

    return wrap


def doc_of(handler: Any) -> ApiDoc:
    doc: ApiDoc = getattr(handler, "__loom_doc__", ApiDoc())
    return doc


def checked_query(
    request: Request, query: Query, *, ignore_unknown: bool = False
) -> dict[str, Any]:
    from gateway.errors import BadRequest

    try:
        return query.parse(request.query_params, ignore_unknown=ignore_unknown)
    except ValidationFailed as exc:
        raise BadRequest(str(exc)) from None


def checked_body(schema: CompiledSchema, body: Any) -> None:
    from gateway.errors import BadRequest

    try:
        schema.validate(body)
    except ValidationFailed as exc:
        raise BadRequest(str(exc)) from None
