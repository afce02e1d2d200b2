"""The conductor's domain errors, mapped to gRPC status codes in one place (rpc.py)."""

from __future__ import annotations


class ConductorError(Exception):
    """Base of the errors a request may end with; the message is safe to show a tenant."""


class NotFound(ConductorError):
    """The thing asked for does not exist (or is in another project)."""


class InvalidArgument(ConductorError):
    """The request is malformed or names something unusable."""


class Conflict(ConductorError):
    """The request does not fit the current state."""


class QuotaExceeded(ConductorError):
    """The request would take a project over a limit; the message names the resource."""

    def __init__(self, resource: str, requested: int, used: int, limit: int) -> None:
        self.resource = resource
        super().__init__(
            f"Quota exceeded for {resource}: Requested {requested}, but already used "
            f"{used} of {limit} {resource}"
        )
