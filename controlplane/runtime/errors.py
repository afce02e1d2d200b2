"""The errors every domain service's requests may end with, mapped to gRPC status codes in
one place (controlplane.runtime.rpc.grpc_errors). Pure: no grpc, database or bus here."""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a request may end with; the message is safe to show a tenant."""


class NotFound(DomainError):
    """The thing asked for does not exist (or is in another project)."""


class InvalidArgument(DomainError):
    """The request is malformed or names something unusable."""


class Conflict(DomainError):
    """The request does not fit the current state."""


class QuotaExceeded(DomainError):
    """The request would take a project over a limit; the message names the resource."""

    def __init__(self, resource: str, requested: int, used: int, limit: int) -> None:
        self.resource = resource
        super().__init__(
            f"Quota exceeded for {resource}: Requested {requested}, but already used "
            f"{used} of {limit} {resource}"
        )
