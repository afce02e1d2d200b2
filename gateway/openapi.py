"""/openapi.json, generated from the route table and each handler's documented schemas and
policy, so the published description is always the one the gateway enforces.

Each operation carries `x-loom-policy`: the least a caller needs ("public": no token;
"authenticated": any valid token; "reader", "member", "admin": that role or one implying
it), with `owner` naming the path parameter a caller below admin must own and, for an
action route, `actions`: the rule of each body key."""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.microversion import MAX_VERSION
from gateway.routing import PUBLIC, doc_of, documented
from gateway.validation import QueryParam

_PARAM = re.compile(r"{([^}:]+)(:[^}]+)?}")
_QUERY_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "nonneg_integer": {"type": "integer", "minimum": 0},
    "boolean": {"type": "boolean"},
    "datetime": {"type": "string", "format": "date-time"},
}


def _query_param(p: QueryParam) -> dict[str, Any]:
    schema: dict[str, Any] = {**_QUERY_TYPES[p.kind]}
    if p.enum:
        schema["enum"] = list(p.enum)
    if p.multi:
        schema = {"type": "array", "items": schema}
    return {"name": p.name, "in": "query", "required": False, "schema": schema}


def build_document(routes: list[BaseRoute]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or route.methods is None:
            continue
        doc = doc_of(route.endpoint)
        path = _PARAM.sub(r"{\1}", route.path)
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name, _ in _PARAM.findall(route.path)
        ]
        summary = (route.endpoint.__doc__ or route.name or "").strip().splitlines()[0]
        for method in sorted(route.methods - {"HEAD"} or route.methods):
            op: dict[str, Any] = {
                "operationId": f"{route.name}_{method.lower()}",
                "summary": summary,
                "tags": [doc.tag] if doc.tag else [],
                "parameters": params + [_query_param(q) for q in doc.query],
                "responses": {"default": {"description": "See the OpenStack API reference."}},
            }
            if doc.policy is not None:
                op["x-loom-policy"] = doc.policy.describe()
            if doc.body is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": doc.body.schema}},
                }
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Loom gateway",
            "version": str(MAX_VERSION),
            "description": "OpenStack-compatible Compute v2.1, Identity v3, Image v2 and"
            " Network v2.0 subsets. Compute request schemas shown are those of the newest"
            " microversion.",
        },
        "paths": dict(sorted(paths.items())),
    }


@documented(policy=PUBLIC)
async def openapi(request: Request) -> Response:
    """This document."""
    return JSONResponse(build_document(list(request.app.routes)))
