"""The gateway's REST request latency, by method, route template and status.

The route is the template the request matched ("/compute/v2.1/servers/{server_id}"), never
the raw path, so the series stay as few as the routes; a request no route took is
"unmatched".
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Histogram

from controlplane.runtime.metrics import LATENCY_BUCKETS

REQUEST_DURATION = Histogram(
    "loom_http_request_duration_seconds",
    "Time the gateway took to answer a REST request, by method, route template and status.",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_children: dict[tuple[str, str, int], Any] = {}


def route_template(scope: dict[str, Any] | Any) -> str:
    """The template of the route Starlette's router matched (it records it in the scope)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def observe(method: str, route: str, status: int, seconds: float) -> None:
    # labels() takes a lock on every call; a dict read of a child seen before does not.
    key = (method, route, status)
    child = _children.get(key)
    if child is None:
        child = REQUEST_DURATION.labels(method if method in _METHODS else "OTHER", route, status)
        _children[key] = child
    child.observe(seconds)
