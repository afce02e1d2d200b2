"""Route metadata shared by validation and /openapi.json, so the two never drift.

`@documented(body=..., query=..., policy=...)` attaches the compiled request schema, the
accepted query parameters and the access policy to a handler; handlers validate with
exactly those objects, the OpenAPI generator publishes exactly their schemas and policy
(as `x-loom-policy`), and the generated policy matrix (tests/gateway/test_policy_matrix.py)
checks every route against its declared policy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from gateway.validation import NO_QUERY, CompiledSchema, Query, ValidationFailed

Handler = Callable[[Request], Awaitable[Response]]
H = TypeVar("H", bound=Handler)


# Who may call a route, weakest first: no token at all; any valid token; then the roles,
# each implying the ones before it (admin implies member, member implies reader).
Rule = Literal["public", "authenticated", "reader", "member", "admin"]
RULES: tuple[Rule, ...] = ("public", "authenticated", "reader", "member", "admin")
# The path parameter that names whose target a route acts on, for the admin-or-owner rules:
# below admin, "project_id" must be the token's project and "user_id" the token's user.
Owner = Literal["", "project_id", "user_id"]


@dataclass(frozen=True)
class Policy:
    """A route's access rule, declared where the route is.

    `rule` is the least a caller needs. With `owner`, a caller below admin must also own
    what that path parameter names (else 403). Resources of another project are a separate
    matter: they answer 404 to anyone but an admin, whatever the rule. `target` says in
    words what else the answer depends on (the target's owner, a field or filter kept to
    admins); it is published, and checked by the handlers' own tests, not the matrix.
    `actions` is the rule of each body key of an action route (`{"os-stop": null}`).
    """

    rule: Rule
    owner: Owner = ""
    target: str = ""
    actions: dict[str, Policy] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The `x-loom-policy` published for the route's operations in /openapi.json."""
        out: dict[str, Any] = {"rule": self.rule}
        if self.owner:
            out["owner"] = self.owner
        if self.target:
            out["target"] = self.target
        if self.actions:
            out["actions"] = {k: p.describe() for k, p in sorted(self.actions.items())}
        return out


PUBLIC = Policy("public")
AUTHENTICATED = Policy("authenticated")
READER = Policy("reader")
MEMBER = Policy("member")
ADMIN = Policy("admin")
# Admin, or the path's project is the caller's own (a reader of it may look).
READER_OF_PROJECT = Policy("reader", owner="project_id")
# Admin, or the path's user is the caller (any valid token of that user).
SELF_OR_ADMIN = Policy("authenticated", owner="user_id")
# Admin, or the path's project is the token's (any role on it).
AUTHENTICATED_IN_PROJECT = Policy("authenticated", owner="project_id")
# A change to an image: a member, and the image's owner or an admin.
IMAGE_OWNER = Policy(
    "member",
    target="the image's owner or an admin: another project's image the caller sees"
    " (public or shared) is 403, one it does not see 404",
)
# An answer to an image offered to the caller's project: a member, and that project
# itself (the image's owner is 403; a project the image is not offered to, 404).
IMAGE_MEMBER = Policy(
    "member",
    target="the member project itself or an admin: the image's owner is 403, a project"
    " the image is not offered to 404",
)


@dataclass(frozen=True)
class ApiDoc:
    body: CompiledSchema | None = None
    query: Query = NO_QUERY
    # "compute", "identity" or "image": which auth and error conventions apply.
    tag: str = ""
    # None only for a handler never declared: test_policy_matrix fails on it.
    policy: Policy | None = None


def documented(
    *,
    body: CompiledSchema | None = None,
    query: Query = NO_QUERY,
    tag: str = "",
    policy: Policy,
) -> Callable[[H], H]:
    def wrap(handler: H) -> H:
        handler.__loom_doc__ = ApiDoc(body=body, query=query, tag=tag, policy=policy)  # type: ignore[attr-defined]
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
