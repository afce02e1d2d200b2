"""Route metadata shared by validation and /openapi.json, so the two never drift.

`@documented(body=..., query=...)` attaches the request schema and the accepted query
parameters to a handler; handlers validate with exactly those objects and the OpenAPI
generator publishes exactly those objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from gateway.validation import QueryParam, Schema, ValidationFailed, parse_query, validate

Handler = Callable[[Request], Awaitable[Response]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class ApiDoc:
    body: Schema | None = None
    query: list[QueryParam] = field(default_factory=list)
    # "compute", "identity" or "image": which auth and error conventions apply.
    tag: str = ""


def documented(
    *, body: Schema | None = None, query: list[QueryParam] | None = None, tag: str = ""
) -> Callable[[H], H]:
    def wrap(handler: H) -> H:
        handler.__loom_doc__ = ApiDoc(body=body, query=query or [], tag=tag)  # type: ignore[attr-defined]
        return handler

    return wrap


def doc_of(handler: Any) -> ApiDoc:
    doc: ApiDoc = getattr(handler, "__loom_doc__", ApiDoc())
    return doc


def checked_query(
    request: Request, params: list[QueryParam], *, ignore_unknown: bool = False
) -> dict[str, Any]:
    from gateway.errors import BadRequest

    try:
        return parse_query(request.query_params, params, ignore_unknown=ignore_unknown)
    except ValidationFailed as exc:
        raise BadRequest(str(exc)) from None


def checked_body(schema: Schema, body: Any) -> None:
    from gateway.errors import BadRequest

    try:
        validate(schema, body)
    except ValidationFailed as exc:
        raise BadRequest(str(exc)) from None
