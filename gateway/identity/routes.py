"""Identity v3 at /identity: version documents, password and token authentication with
signed expiring tokens, and the admin API the openstack CLI uses for projects, users,
roles and role assignments (default domain only)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from loom.identity.v1 import identity_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.auth.context import RequestContext, authenticate, expand_roles
from gateway.auth.tokens import InvalidToken, TokenClaims
from gateway.conductor import call
from gateway.errors import ApiError, BadRequest, Forbidden, NotFound, Unauthorized
from gateway.identity import catalog_routes, views
from gateway.identity.schemas import (
    AUTH_SCHEMA,
    PROJECT_CREATE,
    PROJECT_UPDATE,
    ROLE_CREATE,
    USER_ATTRIBUTES,
    USER_CREATE,
    USER_UPDATE,
)
from gateway.routing import (
    ADMIN,
    AUTHENTICATED,
    AUTHENTICATED_IN_PROJECT,
    PUBLIC,
    SELF_OR_ADMIN,
    Policy,
    checked_body,
    checked_query,
    documented,
)
from gateway.state import base_url, gateway_of, json_body, request_id
from gateway.validation import Query, QueryParam
from gateway.validation.schema import shorten

_TAG = "identity"

# Keystone ignores filters it does not know; Loom does the same for list filters but
# still types the ones it reads.
_LIST_Q = Query(
    QueryParam("name"),
    QueryParam("domain_id"),
    QueryParam("enabled", "boolean"),
    QueryParam("is_domain", "boolean"),
    QueryParam("parent_id"),
)
_ASSIGN_Q = Query(
    QueryParam("user.id"),
    QueryParam("scope.project.id"),
    QueryParam("role.id"),
    QueryParam("effective"),
    QueryParam("include_names"),
    QueryParam("include_subtree"),
    QueryParam("scope.domain.id"),
    QueryParam("scope.system"),
    QueryParam("group.id"),
)


def _known_query(request: Request, params: Query) -> dict[str, Any]:
    names = {p.name for p in params}
    for key in request.query_params:
        if key not in names:
            raise BadRequest(f"Invalid filter: {shorten(key)} is not a filter Loom supports")
    return checked_query(request, params)


def _admin(request: Request) -> RequestContext:
    ctx = authenticate(request, gateway_of(request).signer)
    if not ctx.is_admin:
        raise Forbidden("You are not authorized to perform the requested action.")
    return ctx


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


# ------------------------------------------------------------------------ versions


def refuse_options(resource: str, fields: dict[str, Any]) -> None:
    """Loom stores and enforces no resource options (a user's lock_password,
    ignore_lockout_failure_attempts, multi-factor rules; a project's or role's immutable
    flag): setting one is a 400 rather than a silent no-op. Unsetting one (null) is
    accepted: none is ever set."""
    options = fields.get("options") or {}
    set_ = sorted(str(k) for k, v in options.items() if v is not None)
    if set_:
        named = ", ".join(k[:64] for k in set_[:5])
        raise BadRequest(
            f"Invalid input for field 'options': Loom does not enforce {resource} options "
            f"({named})."
        )


@documented(tag=_TAG, policy=PUBLIC)
async def versions(request: Request) -> Response:
    """Identity API versions."""
    return _json({"versions": {"values": [views.version_doc(base_url(request))]}}, 300)


@documented(tag=_TAG, policy=PUBLIC)
async def version_v3(request: Request) -> Response:
    """The Identity v3 version document."""
    return _json({"version": views.version_doc(base_url(request))})


# ------------------------------------------------------------------------ tokens


async def _scope_roles(
    request: Request, user_id: str, project_id: str
) -> tuple[tuple[str, str], ...]:
    conductor = gateway_of(request).conductor
    all_roles = await call(conductor.identity.ListRoles, identity_pb2.ListRolesRequest())
    held = await call(
        conductor.identity.ListRoleAssignments,
        identity_pb2.ListRoleAssignmentsRequest(user_id=user_id, project_id=project_id),
    )
    return expand_roles(
        [(a.role_id, a.role_name) for a in held.assignments],
        {r.name: r.id for r in all_roles.roles},
    )


def _domain_ref(ref: dict[str, Any] | None) -> str:
    if not ref:
        return "default"
    return str(ref.get("id") or ref.get("name") or "default")


@documented(body=AUTH_SCHEMA, tag=_TAG, policy=PUBLIC)
async def issue_token(request: Request) -> Response:
    """Authenticate with a password or a token; returns a signed token (X-Subject-Token)."""
    gw = gateway_of(request)
    body = await json_body(request)
    checked_body(AUTH_SCHEMA, body)
    auth = body["auth"]
    identity = auth["identity"]
    methods = identity["methods"]
    scope = auth.get("scope") or {}
    scope_project = scope.get("project") if isinstance(scope, dict) else None
    if isinstance(scope, dict) and set(scope) - {"project"}:
        raise ApiError(401, "Only project-scoped and unscoped tokens are supported.")

    inherited_expiry: datetime | None = None
    if "password" in methods and "password" in identity:
        u = identity["password"]["user"]
        if not u.get("id") and not u.get("name"):
            raise BadRequest("Expecting to find id or name in user.")
        req = identity_pb2.AuthenticateRequest(
            user_id=u.get("id", ""),
            user_name=u.get("name", ""),
            user_domain=_domain_ref(u.get("domain")),
            password=u["password"],
        )
        if scope_project:
            req.project_id = scope_project.get("id", "")
            req.project_name = scope_project.get("name", "")
            req.project_domain = _domain_ref(scope_project.get("domain"))
        who = req.user_id or f"{req.user_domain}/{req.user_name}"
        source = request.client.host if request.client else ""
        wait = gw.sign_ins.retry_after(who, source)
        if wait:
            raise ApiError(
                429,
                f"Too many failed sign-ins; try again in {wait} seconds.",
                headers={"Retry-After": str(wait)},
            )
        try:
            reply = await call(gw.conductor.identity.Authenticate, req)
        except ApiError as exc:
            if exc.status in (401, 403):
                gw.sign_ins.failed(who, source)
            if exc.status in (401, 403):
                # Keystone answers every authentication failure with 401.
                raise Unauthorized(
                    "The request you have made requires authentication."
                    if exc.status == 401
                    else exc.message
                ) from exc
            raise
        gw.sign_ins.succeeded(who)
        user_id, user_name = reply.user.id, reply.user.name
        project = reply.project if reply.HasField("project") else None
        if project is None and scope != "unscoped" and reply.user.default_project_id:
            project = await _try_default_project(request, reply.user)
    elif "token" in methods and "token" in identity:
        try:
            prior = gw.signer.verify(identity["token"]["id"])
        except InvalidToken as exc:
            raise Unauthorized(str(exc)) from exc
        user_id = prior.user_id
        # A token made from a token keeps its expiry and says how the first was got.
        inherited_expiry = prior.expires
        methods = [*prior.methods, *(m for m in methods if m not in prior.methods)]
        try:
            # The token holds the user's id only (as Keystone's): its name is looked up.
            found_user = await call(
                gw.conductor.identity.GetUser, identity_pb2.GetUserRequest(id=user_id)
            )
        except ApiError as exc:
            if exc.status == 404:
                raise Unauthorized("The user of this token no longer exists.") from exc
            raise
        user_name = found_user.user.name
        project = None
        if scope_project:
            ref = scope_project.get("id") or scope_project.get("name") or ""
            found = await call(
                gw.conductor.identity.GetProject, identity_pb2.GetProjectRequest(id=ref)
            )
            project = found.project
    else:
        raise Unauthorized("Only the password and token methods are supported.")

    roles: tuple[tuple[str, str], ...] = ()
    if project is not None:
        roles = await _scope_roles(request, user_id, project.id)
        if not roles:
            raise Unauthorized(f"User {user_id} has no access to project {project.id}")
        if not project.enabled:
            raise Unauthorized(f"Project {project.id} is disabled")
    token, claims = gw.signer.issue(
        user_id=user_id,
        project_id=project.id if project else "",
        roles=(name for _, name in roles),
        methods=tuple(methods),
        expires=inherited_expiry,
    )
    body = views.token(
        claims,
        base_url(request),
        gw.cfg.region,
        user_name=user_name,
        project_name=project.name if project else "",
        roles=roles,
        with_catalog=True,
    )
    return _json(body, 201, {"X-Subject-Token": token})


async def _try_default_project(
    request: Request, user: identity_pb2.User
) -> identity_pb2.Project | None:
    """Keystone scopes a token to the user's default project when no scope is given."""
    try:
        found = await call(
            gateway_of(request).conductor.identity.GetProject,
            identity_pb2.GetProjectRequest(id=user.default_project_id),
        )
    except ApiError:
        return None
    project: identity_pb2.Project = found.project
    return project


# Any valid token may ask, for a token of its own user; an admin's, for anyone's.
REVOKE = Policy("authenticated", target="the subject token's user, or an admin (else 403)")


def _subject(request: Request) -> tuple[TokenClaims, str]:
    gw = gateway_of(request)
    authenticate_any(request)
    subject = request.headers.get("x-subject-token", "")
    try:
        return gw.signer.verify(subject), subject
    except InvalidToken as exc:
        raise NotFound(f"Could not find token: {exc}") from exc


def authenticate_any(request: Request) -> TokenClaims:
    """Any valid token, scoped or not."""
    token = request.headers.get("x-auth-token", "")
    if not token:
        raise Unauthorized()
    try:
        return gateway_of(request).signer.verify(token)
    except InvalidToken as exc:
        raise Unauthorized(str(exc)) from exc


@documented(
    query=Query(QueryParam("nocatalog"), QueryParam("allow_expired")),
    tag=_TAG,
    policy=AUTHENTICATED,
)
async def validate_token(request: Request) -> Response:
    """Validate the token in X-Subject-Token (GET returns it, HEAD only checks it)."""
    claims, subject = _subject(request)
    headers = {"X-Subject-Token": subject}
    if request.method == "HEAD":
        return Response(status_code=200, headers=headers)
    gw = gateway_of(request)
    user_name, project_name, roles = await _token_names(request, claims)
    body = views.token(
        claims,
        base_url(request),
        gw.cfg.region,
        user_name=user_name,
        project_name=project_name,
        roles=roles,
        with_catalog="nocatalog" not in request.query_params,
    )
    return _json(body, 200, headers)


async def _token_names(
    request: Request, claims: TokenClaims
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """The user's and project's names and the (id, name) of each role of a token, which
    holds ids and role names only. 404 when its user or project is gone (as Keystone)."""
    identity = gateway_of(request).conductor.identity
    try:
        user, project, all_roles = await asyncio.gather(
            call(identity.GetUser, identity_pb2.GetUserRequest(id=claims.user_id)),
            call(identity.GetProject, identity_pb2.GetProjectRequest(id=claims.project_id))
            if claims.project_id
            else _no_project(),
            call(identity.ListRoles, identity_pb2.ListRolesRequest()),
        )
    except ApiError as exc:
        if exc.status == 404:
            raise NotFound("Could not find token: its user or project no longer exists.") from exc
        raise
    ids = {r.name: r.id for r in all_roles.roles}
    # A role deleted since the token was issued has no id left to show.
    roles = tuple((ids[name], name) for name in claims.roles if name in ids)
    return user.user.name, project.project.name, roles


async def _no_project() -> identity_pb2.GetProjectResponse:
    return identity_pb2.GetProjectResponse()  # an unscoped token: its project name is empty


def _revocations_changed(request: Request) -> None:
    """The identity service revoked a user's tokens: this gateway reads the revocation
    before its next request, not an interval later."""
    revocations = gateway_of(request).signer.revocations
    if revocations is not None:
        revocations.refresh_soon()


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts


@documented(tag=_TAG, policy=REVOKE)
async def revoke_token(request: Request) -> Response:
    """Revoke the token in X-Subject-Token: at once on this gateway, within seconds on the
    others. A user may revoke their own tokens; an admin any."""
    caller = authenticate_any(request)
    claims, _ = _subject(request)
    if claims.user_id != caller.user_id and "admin" not in caller.role_names:
        raise Forbidden("You are not authorized to perform the requested action.")
    gw = gateway_of(request)
    reply = await call(
        gw.conductor.identity.RevokeTokens,
        identity_pb2.RevokeTokensRequest(
            audit_id=claims.audit_id, expires_at=_timestamp(claims.expires)
        ),
    )
    revocations = gw.signer.revocations
    if revocations is not None:
        revocations.add(reply.revocation)
    return Response(status_code=204)


@documented(tag=_TAG, policy=AUTHENTICATED)
async def auth_projects(request: Request) -> Response:
    """Projects the token's user holds a role on."""
    claims = authenticate_any(request)
    reply = await call(
        gateway_of(request).conductor.identity.ListProjects,
        identity_pb2.ListProjectsRequest(user_id=claims.user_id),
    )
    base = base_url(request)
    return _json(
        {"projects": [views.project(p, base) for p in reply.projects], "links": _links(request)}
    )


@documented(tag=_TAG, policy=AUTHENTICATED)
async def auth_catalog(request: Request) -> Response:
    """The service catalog of the token."""
    authenticate_any(request)
    gw = gateway_of(request)
    return _json(
        {"catalog": views.catalog(base_url(request), gw.cfg.region), "links": _links(request)}
    )


def _links(request: Request) -> dict[str, Any]:
    return {"self": str(request.url), "previous": None, "next": None}


# ------------------------------------------------------------------------ domains


@documented(query=_LIST_Q, tag=_TAG, policy=AUTHENTICATED)
async def list_domains(request: Request) -> Response:
    """Domains (Loom has only the default domain)."""
    authenticate_any(request)
    q = _known_query(request, _LIST_Q)
    doms = [views.domain(base_url(request))]
    if q.get("name") not in (None, "Default", "default"):
        doms = []
    return _json({"domains": doms, "links": _links(request)})


def require_domain(domain_id: str | None) -> None:
    """Loom has one domain, `default`: any other is not found."""
    if domain_id is not None and domain_id not in ("default", "Default"):
        raise NotFound(f"Could not find domain: {domain_id[:64]}.")


@documented(tag=_TAG, policy=AUTHENTICATED)
async def show_domain(request: Request) -> Response:
    """The default domain."""
    authenticate_any(request)
    require_domain(request.path_params["domain_id"])
    return _json({"domain": views.domain(base_url(request))})


# ------------------------------------------------------------------------ projects


class _Enableable(Protocol):
    @property
    def enabled(self) -> bool: ...


_E = TypeVar("_E", bound=_Enableable)


def _listed(items: Iterable[_E], q: dict[str, Any]) -> list[_E]:
    """The list filters projects and users share: `enabled`, and `domain_id` (only the
    default domain exists, so any other matches nothing)."""
    if q.get("domain_id") not in (None, "default"):
        return []
    return [i for i in items if "enabled" not in q or i.enabled == q["enabled"]]


@documented(query=_LIST_Q, tag=_TAG, policy=ADMIN)
async def list_projects(request: Request) -> Response:
    """Projects (admin)."""
    _admin(request)
    q = _known_query(request, _LIST_Q)
    reply = await call(
        gateway_of(request).conductor.identity.ListProjects,
        identity_pb2.ListProjectsRequest(name=q.get("name", "")),
    )
    projects = _listed(reply.projects, q)
    base = base_url(request)
    return _json({"projects": [views.project(p, base) for p in projects], "links": _links(request)})


@documented(body=PROJECT_CREATE, tag=_TAG, policy=ADMIN)
async def create_project(request: Request) -> Response:
    """Create a project (admin)."""
    _admin(request)
    body = await json_body(request)
    checked_body(PROJECT_CREATE, body)
    p = body["project"]
    refuse_options("project", p)
    require_domain(p.get("domain_id"))
    if p.get("parent_id") not in (None, "default"):
        raise BadRequest("Loom projects have no hierarchy: parent_id must be the domain.")
    reply = await call(
        gateway_of(request).conductor.identity.CreateProject,
        identity_pb2.CreateProjectRequest(
            request_id=request_id(request),
            project=identity_pb2.Project(
                name=p["name"],
                description=p.get("description") or "",
                domain_id="default",
                enabled=p.get("enabled", True),
            ),
        ),
    )
    return _json({"project": views.project(reply.project, base_url(request))}, 201)


async def _project_by_id(request: Request, project_id: str) -> identity_pb2.Project:
    reply = await call(
        gateway_of(request).conductor.identity.GetProject,
        identity_pb2.GetProjectRequest(id=project_id),
    )
    if reply.project.id != project_id:
        # GetProject also matches names; the REST path names an id.
        raise NotFound(f"Could not find project: {project_id}.")
    project: identity_pb2.Project = reply.project
    return project


@documented(tag=_TAG, policy=AUTHENTICATED_IN_PROJECT)
async def show_project(request: Request) -> Response:
    """One project (admin, or a member of it)."""
    ctx = authenticate(request, gateway_of(request).signer)
    pid = request.path_params["project_id"]
    if not ctx.is_admin and pid != ctx.project_id:
        raise Forbidden("You are not authorized to perform the requested action.")
    try:
        project = await _project_by_id(request, pid)
    except ApiError as exc:
        raise NotFound(f"Could not find project: {pid}.") from exc
    return _json({"project": views.project(project, base_url(request))})


@documented(body=PROJECT_UPDATE, tag=_TAG, policy=ADMIN)
async def update_project(request: Request) -> Response:
    """Change a project's name, description or enabled flag (admin)."""
    _admin(request)
    body = await json_body(request)
    checked_body(PROJECT_UPDATE, body)
    p = body["project"]
    refuse_options("project", p)
    require_domain(p.get("domain_id"))
    req = identity_pb2.UpdateProjectRequest(
        request_id=request_id(request), id=request.path_params["project_id"]
    )
    if "name" in p:
        req.name = p["name"]
    if "description" in p:
        req.description = p["description"] or ""
    if "enabled" in p:
        req.enabled = p["enabled"]
    reply = await call(gateway_of(request).conductor.identity.UpdateProject, req)
    return _json({"project": views.project(reply.project, base_url(request))})


@documented(tag=_TAG, policy=ADMIN)
async def delete_project(request: Request) -> Response:
    """Delete a project and its role assignments (admin)."""
    _admin(request)
    await call(
        gateway_of(request).conductor.identity.DeleteProject,
        identity_pb2.DeleteProjectRequest(
            request_id=request_id(request), id=request.path_params["project_id"]
        ),
    )
    return Response(status_code=204)


# ------------------------------------------------------------------------ users


@documented(query=_LIST_Q, tag=_TAG, policy=ADMIN)
async def list_users(request: Request) -> Response:
    """Users (admin)."""
    _admin(request)
    q = _known_query(request, _LIST_Q)
    reply = await call(
        gateway_of(request).conductor.identity.ListUsers,
        identity_pb2.ListUsersRequest(name=q.get("name", "")),
    )
    users = _listed(reply.users, q)
    base = base_url(request)
    return _json({"users": [views.user(u, base) for u in users], "links": _links(request)})


def _extra_json(u: dict[str, Any]) -> str:
    """The attributes of a user body beyond Identity v3's own, as a JSON object ("" for
    none)."""
    extra = {k: v for k, v in u.items() if k not in USER_ATTRIBUTES}
    return json.dumps(extra, sort_keys=True) if extra else ""


@documented(body=USER_CREATE, tag=_TAG, policy=ADMIN)
async def create_user(request: Request) -> Response:
    """Create a user (admin)."""
    _admin(request)
    body = await json_body(request)
    checked_body(USER_CREATE, body)
    u = body["user"]
    refuse_options("user", u)
    require_domain(u.get("domain_id"))
    reply = await call(
        gateway_of(request).conductor.identity.CreateUser,
        identity_pb2.CreateUserRequest(
            request_id=request_id(request),
            user=identity_pb2.User(
                name=u["name"],
                domain_id="default",
                email=u.get("email") or "",
                description=u.get("description") or "",
                enabled=u.get("enabled", True),
                default_project_id=u.get("default_project_id") or "",
                extra_json=_extra_json(u),
            ),
            password=u.get("password") or "",
        ),
    )
    return _json({"user": views.user(reply.user, base_url(request))}, 201)


def _self_or_admin(request: Request, user_id: str) -> None:
    claims = authenticate_any(request)
    if claims.user_id == user_id:
        return
    if not claims.project_id or "admin" not in claims.role_names:
        raise Forbidden("You are not authorized to perform the requested action.")


@documented(tag=_TAG, policy=SELF_OR_ADMIN)
async def show_user(request: Request) -> Response:
    """One user (admin, or the user)."""
    uid = request.path_params["user_id"]
    _self_or_admin(request, uid)
    reply = await call(
        gateway_of(request).conductor.identity.GetUser, identity_pb2.GetUserRequest(id=uid)
    )
    if reply.user.id != uid:
        raise NotFound(f"Could not find user: {uid}.")
    return _json({"user": views.user(reply.user, base_url(request))})


@documented(body=USER_UPDATE, tag=_TAG, policy=ADMIN)
async def update_user(request: Request) -> Response:
    """Change a user (admin)."""
    _admin(request)
    body = await json_body(request)
    checked_body(USER_UPDATE, body)
    u = body["user"]
    refuse_options("user", u)
    req = identity_pb2.UpdateUserRequest(
        request_id=request_id(request), id=request.path_params["user_id"]
    )
    for key in ("name", "email", "description", "default_project_id", "password"):
        if key in u and u[key] is not None:
            setattr(req, key, u[key])
    if "enabled" in u:
        req.enabled = u["enabled"]
    if extra := _extra_json(u):
        req.extra_json = extra
    reply = await call(gateway_of(request).conductor.identity.UpdateUser, req)
    if req.HasField("password") or (req.HasField("enabled") and not req.enabled):
        _revocations_changed(request)
    return _json({"user": views.user(reply.user, base_url(request))})


@documented(tag=_TAG, policy=ADMIN)
async def delete_user(request: Request) -> Response:
    """Delete a user and their role assignments (admin)."""
    _admin(request)
    await call(
        gateway_of(request).conductor.identity.DeleteUser,
        identity_pb2.DeleteUserRequest(
            request_id=request_id(request), id=request.path_params["user_id"]
        ),
    )
    _revocations_changed(request)
    return Response(status_code=204)


@documented(tag=_TAG, policy=SELF_OR_ADMIN)
async def user_projects(request: Request) -> Response:
    """Projects a user holds a role on (admin, or the user)."""
    uid = request.path_params["user_id"]
    _self_or_admin(request, uid)
    reply = await call(
        gateway_of(request).conductor.identity.ListProjects,
        identity_pb2.ListProjectsRequest(user_id=uid),
    )
    base = base_url(request)
    return _json(
        {"projects": [views.project(p, base) for p in reply.projects], "links": _links(request)}
    )


# ------------------------------------------------------------------------ roles


@documented(query=_LIST_Q, tag=_TAG, policy=AUTHENTICATED)
async def list_roles(request: Request) -> Response:
    """Roles."""
    authenticate(request, gateway_of(request).signer)
    q = _known_query(request, _LIST_Q)
    reply = await call(
        gateway_of(request).conductor.identity.ListRoles,
        identity_pb2.ListRolesRequest(name=q.get("name", "")),
    )
    base = base_url(request)
    return _json({"roles": [views.role(r, base) for r in reply.roles], "links": _links(request)})


@documented(body=ROLE_CREATE, tag=_TAG, policy=ADMIN)
async def create_role(request: Request) -> Response:
    """Create a role (admin)."""
    _admin(request)
    body = await json_body(request)
    checked_body(ROLE_CREATE, body)
    refuse_options("role", body["role"])
    reply = await call(
        gateway_of(request).conductor.identity.CreateRole,
        identity_pb2.CreateRoleRequest(request_id=request_id(request), name=body["role"]["name"]),
    )
    return _json({"role": views.role(reply.role, base_url(request))}, 201)


@documented(tag=_TAG, policy=ADMIN)
async def delete_role(request: Request) -> Response:
    """Delete a role (admin) with its grants; the users' tokens on those projects are
    revoked. admin, member and reader, which the policies name, are 403."""
    _admin(request)
    await call(
        gateway_of(request).conductor.identity.DeleteRole,
        identity_pb2.DeleteRoleRequest(id=request.path_params["role_id"]),
    )
    _revocations_changed(request)
    return Response(status_code=204)


@documented(tag=_TAG, policy=AUTHENTICATED)
async def show_role(request: Request) -> Response:
    """One role."""
    authenticate(request, gateway_of(request).signer)
    rid = request.path_params["role_id"]
    reply = await call(
        gateway_of(request).conductor.identity.ListRoles, identity_pb2.ListRolesRequest()
    )
    for r in reply.roles:
        if r.id == rid:
            return _json({"role": views.role(r, base_url(request))})
    raise NotFound(f"Could not find role: {rid}.")


async def _role_id(request: Request, ref: str) -> identity_pb2.Role:
    reply = await call(
        gateway_of(request).conductor.identity.ListRoles, identity_pb2.ListRolesRequest()
    )
    for r in reply.roles:
        if ref == r.id:
            role: identity_pb2.Role = r
            return role
    raise NotFound(f"Could not find role: {ref}.")


@documented(tag=_TAG, policy=ADMIN)
async def grant_role(request: Request) -> Response:
    """Grant (PUT), check (HEAD/GET) or revoke (DELETE) a role of a user on a project."""
    _admin(request)
    gw = gateway_of(request)
    pid = request.path_params["project_id"]
    uid = request.path_params["user_id"]
    role = await _role_id(request, request.path_params["role_id"])
    if request.method == "PUT":
        await call(
            gw.conductor.identity.AssignRole,
            identity_pb2.AssignRoleRequest(
                request_id=request_id(request), user_id=uid, project_id=pid, role=role.id
            ),
        )
    elif request.method == "DELETE":
        await call(
            gw.conductor.identity.UnassignRole,
            identity_pb2.UnassignRoleRequest(
                request_id=request_id(request), user_id=uid, project_id=pid, role=role.id
            ),
        )
        _revocations_changed(request)
    else:
        reply = await call(
            gw.conductor.identity.ListRoleAssignments,
            identity_pb2.ListRoleAssignmentsRequest(user_id=uid, project_id=pid, role=role.id),
        )
        if not reply.assignments:
            raise NotFound(f"Could not find role assignment with role: {role.id}.")
    return Response(status_code=204)


@documented(tag=_TAG, policy=ADMIN)
async def list_grants(request: Request) -> Response:
    """Roles a user holds on a project (admin)."""
    _admin(request)
    reply = await call(
        gateway_of(request).conductor.identity.ListRoleAssignments,
        identity_pb2.ListRoleAssignmentsRequest(
            user_id=request.path_params["user_id"], project_id=request.path_params["project_id"]
        ),
    )
    base = base_url(request)
    roles = [
        views.role(identity_pb2.Role(id=a.role_id, name=a.role_name), base)
        for a in reply.assignments
    ]
    return _json({"roles": roles, "links": _links(request)})


@documented(query=_ASSIGN_Q, tag=_TAG, policy=ADMIN)
async def list_role_assignments(request: Request) -> Response:
    """Role assignments, filtered by user, project and role (admin)."""
    _admin(request)
    q = _known_query(request, _ASSIGN_Q)
    if "scope.domain.id" in q or "scope.system" in q or "group.id" in q:
        # Loom grants roles on projects to users only: nothing else can match.
        return _json({"role_assignments": [], "links": _links(request)})
    gw = gateway_of(request)
    reply = await call(
        gw.conductor.identity.ListRoleAssignments,
        identity_pb2.ListRoleAssignmentsRequest(
            user_id=q.get("user.id", ""),
            project_id=q.get("scope.project.id", ""),
            role=q.get("role.id", ""),
        ),
    )
    include_names = str(q.get("include_names", "")).lower() in ("1", "true", "")
    include_names = include_names and "include_names" in q
    base = base_url(request)
    out = [views.assignment(a, base, include_names) for a in reply.assignments]
    if include_names and out:
        users = {
            u.id: u.name
            for u in (
                await call(gw.conductor.identity.ListUsers, identity_pb2.ListUsersRequest())
            ).users
        }
        projects = {
            p.id: p.name
            for p in (
                await call(gw.conductor.identity.ListProjects, identity_pb2.ListProjectsRequest())
            ).projects
        }
        for item in out:
            item["user"]["name"] = users.get(item["user"]["id"], "")
            item["user"]["domain"] = dict(views.DEFAULT_DOMAIN)
            proj = item["scope"]["project"]
            proj["name"] = projects.get(proj["id"], "")
            proj["domain"] = dict(views.DEFAULT_DOMAIN)
    return _json({"role_assignments": out, "links": _links(request)})


def routes() -> list[BaseRoute]:
    v3 = "/identity/v3"
    return [
        Route("/identity", versions, methods=["GET"]),
        Route("/identity/", versions, methods=["GET"]),
        Route(v3, version_v3, methods=["GET"]),
        Route(v3 + "/", version_v3, methods=["GET"]),
        Route(v3 + "/auth/tokens", issue_token, methods=["POST"]),
        Route(v3 + "/auth/tokens", validate_token, methods=["GET", "HEAD"]),
        Route(v3 + "/auth/tokens", revoke_token, methods=["DELETE"]),
        Route(v3 + "/auth/projects", auth_projects, methods=["GET"]),
        Route(v3 + "/auth/catalog", auth_catalog, methods=["GET"]),
        Route(v3 + "/domains", list_domains, methods=["GET"]),
        Route(v3 + "/domains/{domain_id}", show_domain, methods=["GET"]),
        Route(v3 + "/projects", list_projects, methods=["GET"]),
        Route(v3 + "/projects", create_project, methods=["POST"]),
        Route(v3 + "/projects/{project_id}", show_project, methods=["GET"]),
        Route(v3 + "/projects/{project_id}", update_project, methods=["PATCH"]),
        Route(v3 + "/projects/{project_id}", delete_project, methods=["DELETE"]),
        Route(v3 + "/projects/{project_id}/users/{user_id}/roles", list_grants, methods=["GET"]),
        Route(
            v3 + "/projects/{project_id}/users/{user_id}/roles/{role_id}",
            grant_role,
            methods=["PUT", "DELETE", "HEAD", "GET"],
        ),
        Route(v3 + "/users", list_users, methods=["GET"]),
        Route(v3 + "/users", create_user, methods=["POST"]),
        Route(v3 + "/users/{user_id}", show_user, methods=["GET"]),
        Route(v3 + "/users/{user_id}", update_user, methods=["PATCH"]),
        Route(v3 + "/users/{user_id}", delete_user, methods=["DELETE"]),
        Route(v3 + "/users/{user_id}/projects", user_projects, methods=["GET"]),
        Route(v3 + "/roles", list_roles, methods=["GET"]),
        Route(v3 + "/roles", create_role, methods=["POST"]),
        Route(v3 + "/roles/{role_id}", show_role, methods=["GET"]),
        Route(v3 + "/roles/{role_id}", delete_role, methods=["DELETE"]),
        Route(v3 + "/role_assignments", list_role_assignments, methods=["GET"]),
        *catalog_routes.routes(),
    ]
