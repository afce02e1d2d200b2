"""API errors and how each API family shapes them.

Handlers raise `ApiError`; the app renders it in the shape of the API the request
went to: Nova's `{"itemNotFound": {"code": 404, "message": ...}}` under /compute,
Keystone's `{"error": {"code", "title", "message"}}` under /identity, Glance's
plain-text bodies under /image, and placement's `{"errors": [...]}` under /placement.
gRPC failures map to HTTP codes in one table here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import grpc

# Nova's fault names per status; anything not listed is a computeFault.
_NOVA_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}

_GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    # Nova answers quota failures with 403 Forbidden ("Quota exceeded ...").
    grpc.StatusCode.RESOURCE_EXHAUSTED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 503,
}


class ApiError(Exception):
    """An error a client should see, with its HTTP status and a human message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # Extra members of the error object, in APIs whose errors carry them (placement's
        # 406 names the versions it serves).
        self.fields = fields or {}


class BadRequest(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(400, message)


class Unauthorized(ApiError):
    def __init__(self, message: str = "The request you have made requires authentication.") -> None:
        super().__init__(401, message)


class Forbidden(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(403, message)


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class Conflict(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(409, message)


# Seconds a 503 asks the client to wait before trying again.
RETRY_AFTER_S = "5"


def from_grpc(code: grpc.StatusCode, details: str) -> ApiError:
    status = _GRPC_TO_HTTP.get(code, 500)
    if status >= 500 and status not in (501, 503):
        # Internal detail stays in the logs; the tenant gets a generic sentence.
        details = "Unexpected API Error. Please report this at your operator."
    elif status == 501:
        details = f"Not implemented by this Loom conductor yet ({details or 'unimplemented'})."
    elif status == 503:
        details = details or "The service is temporarily unavailable."
        # Clients (and balancers) may try again after a pause; nothing was half-done.
        return ApiError(status, details, headers={"Retry-After": RETRY_AFTER_S})
    return ApiError(status, details or HTTPStatus(status).phrase)


def nova_body(status: int, message: str) -> dict[str, Any]:
    return {_NOVA_FAULT_NAMES.get(status, "computeFault"): {"code": status, "message": message}}


def keystone_body(status: int, message: str) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    return {"error": {"code": status, "title": title, "message": message}}


def placement_body(
    status: int, message: str, fields: dict[str, Any] | None = None
) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    error: dict[str, Any] = {"status": status, "title": title, "detail": message}
    return {"errors": [{**error, **(fields or {})}]}


def glance_text(status: int, message: str) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{status} {phrase}\n\n{message}\n\n   "
