"""Who is asking, and what they may do: Nova's and Keystone's default roles.

admin implies member, member implies reader. A reader may look but not change; a
member may change its own project's resources; only an admin sees other projects,
hosts and admin-only fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from gateway.auth.tokens import InvalidToken, TokenClaims, TokenSigner
from gateway.errors import Forbidden, Unauthorized

# Keystone's default implied roles.
IMPLIED_ROLES = {"admin": ("member", "reader"), "member": ("reader",)}


def expand_roles(
    held: list[tuple[str, str]], all_roles: dict[str, str]
) -> tuple[tuple[str, str], ...]:
    """The held (id, name) roles plus those they imply; `all_roles` maps name to id."""
    out = dict((name, rid) for rid, name in held)
    for _, name in held:
        for implied in IMPLIED_ROLES.get(name, ()):
            if implied in all_roles:
                out.setdefault(implied, all_roles[implied])
    return tuple(sorted(((rid, name) for name, rid in out.items()), key=lambda r: r[1]))


@dataclass(frozen=True)
class RequestContext:
    claims: TokenClaims
    token: str

    @property
    def user_id(self) -> str:
        return self.claims.user_id

    @property
    def project_id(self) -> str:
        return self.claims.project_id

    @property
    def is_admin(self) -> bool:
        return "admin" in self.claims.role_names

    @property
    def can_write(self) -> bool:
        return bool({"admin", "member"} & self.claims.role_names)

    @property
    def can_read(self) -> bool:
        return bool({"admin", "member", "reader"} & self.claims.role_names)

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"Policy doesn't allow {action} to be performed.")

    def require_write(self, action: str) -> None:
        if not self.can_write:
            raise Forbidden(f"Policy doesn't allow {action} to be performed.")

    def require_read(self, action: str) -> None:
        if not self.can_read:
            raise Forbidden(f"Policy doesn't allow {action} to be performed.")


def authenticate(request: Request, signer: TokenSigner) -> RequestContext:
    """The caller's context from X-Auth-Token; 401 when missing, forged or expired."""
    token = request.headers.get("x-auth-token", "")
    if not token:
        raise Unauthorized()
    try:
        claims = signer.verify(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc
    if not claims.project_id:
        raise Unauthorized("A project-scoped token is required.")
    return RequestContext(claims=claims, token=token)
