"""The network domain's failures: each has a kind (which gRPC status it becomes) and the
Network v2 error type the gateway shows (`NetworkNotFound`, `IpAddressAlreadyAllocated`...).

Pure: no grpc, sqlalchemy or nats."""

from __future__ import annotations

from typing import Literal

Kind = Literal["not_found", "invalid", "conflict", "quota", "forbidden"]


class NetworkError(Exception):
    """A failure a tenant should see: its kind, its Network v2 type and a message."""

    kind: Kind = "invalid"

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class NotFound(NetworkError):
    kind: Kind = "not_found"


class Invalid(NetworkError):
    kind: Kind = "invalid"

    def __init__(self, message: str, error_type: str = "InvalidInput") -> None:
        super().__init__(error_type, f"Invalid input for operation: {message}")


class Conflict(NetworkError):
    kind: Kind = "conflict"


class OverQuota(NetworkError):
    kind: Kind = "quota"

    def __init__(self, resource: str) -> None:
        super().__init__("OverQuota", f"Quota exceeded for resources: ['{resource}'].")


class Forbidden(NetworkError):
    kind: Kind = "forbidden"

    def __init__(self, message: str) -> None:
        super().__init__("PolicyNotAuthorized", message)


def not_found(kind: str, ident: str) -> NotFound:
    """`NetworkNotFound: Network X could not be found.` and the like for each resource."""
    words = {
        "Network": "Network",
        "Subnet": "Subnet",
        "Port": "Port",
        "SecurityGroup": "Security group",
        "SecurityGroupRule": "Security group rule",
        "Router": "Router",
        "FloatingIP": "Floating IP",
    }
    return NotFound(f"{kind}NotFound", f"{words.get(kind, kind)} {ident} could not be found.")
