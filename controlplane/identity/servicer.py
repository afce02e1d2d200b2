"""IdentityService: projects, users, roles and role assignments in the conductor's database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from loom.identity.v1 import identity_pb2, identity_pb2_grpc
from sqlalchemy import delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import MAX_TOKEN_TTL_S
from controlplane.db.models import Project, Role, RoleAssignment, TokenRevocation, User
from controlplane.db.seeding import Seeder
from controlplane.identity.passwords import hash_password_async, verify_password_async
from controlplane.runtime.rpc import abort, new_id, now, timestamp

DEFAULT_DOMAIN = "default"
# Keystone names the default domain "Default" and gives it the id "default".
_DEFAULT_DOMAIN_NAMES = {"", "default", "Default"}


def _domain_ok(domain: str) -> bool:
    return domain in _DEFAULT_DOMAIN_NAMES


def revocation_pb(r: TokenRevocation) -> identity_pb2.Revocation:
    return identity_pb2.Revocation(
        id=r.id,
        audit_id=r.audit_id or "",
        user_id=r.user_id or "",
        project_id=r.project_id or "",
        issued_before=timestamp(r.issued_before),
        expires_at=timestamp(r.expires_at),
    )


# The roles the gateway's policies name: never deleted.
POLICY_ROLES = frozenset({"admin", "member", "reader"})


def revoke_user_tokens(
    s: AsyncSession, user_id: str, project_id: str | None = None
) -> TokenRevocation:
    """Revokes every token of the user issued until now (in the caller's transaction): a
    password change, a disable or a delete ends the user's sessions; a role taken away on a
    project (`project_id`) ends those scoped to that project, the only ones carrying it."""
    moment = now()
    row = TokenRevocation(
        user_id=user_id,
        project_id=project_id,
        issued_before=moment,
        expires_at=moment + timedelta(seconds=MAX_TOKEN_TTL_S),
    )
    s.add(row)
    return row


def project_pb(p: Project) -> identity_pb2.Project:
    return identity_pb2.Project(
        id=p.id, name=p.name, domain_id=p.domain_id, description=p.description, enabled=p.enabled
    )


def user_pb(u: User) -> identity_pb2.User:
    return identity_pb2.User(
        id=u.id,
        name=u.name,
        domain_id=u.domain_id,
        email=u.email,
        enabled=u.enabled,
        default_project_id=u.default_project_id or "",
        description=u.description,
        extra_json=json.dumps(u.extra, sort_keys=True) if u.extra else "",
    )


def _extra(text: str) -> dict[str, Any]:
    """A JSON object from a request's extra_json; ValueError for anything else."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("extra_json must be a JSON object")
    return value


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    """Passwords are stored as salted scrypt hashes and never leave this class."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], seeder: Seeder) -> None:
        self._sessions = sessions
        self._seeder = seeder

    # ------------------------------------------------------------------ lookups

    async def _project(self, s: AsyncSession, ref: str, domain: str = "") -> Project | None:
        found = await s.get(Project, ref)
        if found is None and _domain_ok(domain):
            found = await s.scalar(
                select(Project).where(Project.name == ref, Project.domain_id == DEFAULT_DOMAIN)
            )
        return found

    async def _user(self, s: AsyncSession, ref: str, domain: str = "") -> User | None:
        found = await s.get(User, ref)
        if found is None and _domain_ok(domain):
            found = await s.scalar(
                select(User).where(User.name == ref, User.domain_id == DEFAULT_DOMAIN)
            )
        return found

    async def _role(self, s: AsyncSession, ref: str) -> Role | None:
        return await s.scalar(select(Role).where(or_(Role.id == ref, Role.name == ref)))

    async def _roles_on(self, s: AsyncSession, user_id: str, project_id: str) -> list[Role]:
        rows = await s.scalars(
            select(Role)
            .join(RoleAssignment, RoleAssignment.role_id == Role.id)
            .where(RoleAssignment.user_id == user_id, RoleAssignment.project_id == project_id)
            .order_by(Role.name)
        )
        return list(rows)

    # ------------------------------------------------------------------ authentication

    async def Authenticate(self, request: identity_pb2.AuthenticateRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions() as s:
            if request.user_id:
                user = await s.get(User, request.user_id)
            elif _domain_ok(request.user_domain):
                user = await s.scalar(
                    select(User).where(
                        User.name == request.user_name, User.domain_id == DEFAULT_DOMAIN
                    )
                )
            else:
                user = None
            # One message for "no such user" and "wrong password": no user enumeration.
            if user is None or not await verify_password_async(
                request.password, user.password_hash
            ):
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, "invalid credentials")
            if not user.enabled:
                await abort(context, grpc.StatusCode.UNAUTHENTICATED, "user is disabled")
            reply = identity_pb2.AuthenticateResponse(user=user_pb(user))
            ref = request.project_id or request.project_name
            if ref:
                if request.project_id:
                    project = await s.get(Project, request.project_id)
                elif _domain_ok(request.project_domain):
                    project = await s.scalar(
                        select(Project).where(
                            Project.name == ref, Project.domain_id == DEFAULT_DOMAIN
                        )
                    )
                else:
                    project = None
                if project is None:
                    await abort(
                        context, grpc.StatusCode.PERMISSION_DENIED, f"no access to project {ref}"
                    )
                if not project.enabled:
                    await abort(
                        context, grpc.StatusCode.PERMISSION_DENIED, f"project {ref} is disabled"
                    )
                roles = await self._roles_on(s, user.id, project.id)
                if not roles:
                    await abort(
                        context,
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"user {user.name} holds no role on project {project.name}",
                    )
                reply.project.CopyFrom(project_pb(project))
                reply.roles.extend(identity_pb2.Role(id=r.id, name=r.name) for r in roles)
            return reply

    # ------------------------------------------------------------------ projects

    async def CreateProject(self, request: identity_pb2.CreateProjectRequest, context: Any) -> Any:
        await self._seeder.ensure()
        want = request.project
        if not want.name:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "project name is required")
        if not _domain_ok(want.domain_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "only the default domain")
        project = Project(
            id=want.id or new_id(),
            name=want.name,
            domain_id=DEFAULT_DOMAIN,
            description=want.description,
            enabled=want.enabled,
            created_at=now(),
        )
        try:
            async with self._sessions.begin() as s:
                s.add(project)
        except IntegrityError:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"project {want.name} already exists"
            )
        return identity_pb2.CreateProjectResponse(project=project_pb(project))

    async def GetProject(self, request: identity_pb2.GetProjectRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions() as s:
            project = await self._project(s, request.id, "default")
        if project is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"project {request.id} not found")
        return identity_pb2.GetProjectResponse(project=project_pb(project))

    async def ListProjects(self, request: identity_pb2.ListProjectsRequest, context: Any) -> Any:
        await self._seeder.ensure()
        query = select(Project).order_by(Project.name)
        if request.user_id:
            held = select(RoleAssignment.project_id).where(
                RoleAssignment.user_id == request.user_id
            )
            query = query.where(Project.id.in_(held))
        if request.name:
            query = query.where(Project.name == request.name)
        async with self._sessions() as s:
            rows = await s.scalars(query)
            return identity_pb2.ListProjectsResponse(projects=[project_pb(p) for p in rows])

    async def UpdateProject(self, request: identity_pb2.UpdateProjectRequest, context: Any) -> Any:
        await self._seeder.ensure()
        try:
            async with self._sessions.begin() as s:
                project = await s.get(Project, request.id)
                if project is None:
                    await abort(
                        context, grpc.StatusCode.NOT_FOUND, f"project {request.id} not found"
                    )
                if request.HasField("name"):
                    project.name = request.name
                if request.HasField("description"):
                    project.description = request.description
                if request.HasField("enabled"):
                    project.enabled = request.enabled
        except IntegrityError:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, "project name already taken")
        return identity_pb2.UpdateProjectResponse(project=project_pb(project))

    async def DeleteProject(self, request: identity_pb2.DeleteProjectRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            project = await s.get(Project, request.id)
            if project is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"project {request.id} not found")
            # Explicit: SQLite only cascades with foreign_keys on, and not every engine has it.
            await s.execute(delete(RoleAssignment).where(RoleAssignment.project_id == project.id))
            await s.delete(project)
        return identity_pb2.DeleteProjectResponse()

    # ------------------------------------------------------------------ users

    async def CreateUser(self, request: identity_pb2.CreateUserRequest, context: Any) -> Any:
        await self._seeder.ensure()
        want = request.user
        if not want.name:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "user name is required")
        if not _domain_ok(want.domain_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "only the default domain")
        try:
            extra = _extra(want.extra_json)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        user = User(
            id=want.id or new_id(),
            name=want.name,
            domain_id=DEFAULT_DOMAIN,
            # A user created without a password can never authenticate with one.
            password_hash=await hash_password_async(request.password) if request.password else "!",
            email=want.email,
            description=want.description,
            enabled=want.enabled,
            default_project_id=want.default_project_id or None,
            extra=extra,
            created_at=now(),
        )
        try:
            async with self._sessions.begin() as s:
                if (
                    user.default_project_id
                    and await s.get(Project, user.default_project_id) is None
                ):
                    await abort(
                        context,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"default project {user.default_project_id} not found",
                    )
                s.add(user)
        except IntegrityError:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, f"user {want.name} already exists")
        return identity_pb2.CreateUserResponse(user=user_pb(user))

    async def GetUser(self, request: identity_pb2.GetUserRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions() as s:
            user = await self._user(s, request.id, "default")
        if user is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user {request.id} not found")
        return identity_pb2.GetUserResponse(user=user_pb(user))

    async def ListUsers(self, request: identity_pb2.ListUsersRequest, context: Any) -> Any:
        await self._seeder.ensure()
        query = select(User).order_by(User.name)
        if request.name:
            query = query.where(User.name == request.name)
        async with self._sessions() as s:
            return identity_pb2.ListUsersResponse(
                users=[user_pb(u) for u in await s.scalars(query)]
            )

    async def UpdateUser(self, request: identity_pb2.UpdateUserRequest, context: Any) -> Any:
        await self._seeder.ensure()
        try:
            extra = _extra(request.extra_json)
        except ValueError as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        new_hash = (
            await hash_password_async(request.password) if request.HasField("password") else None
        )
        try:
            async with self._sessions.begin() as s:
                user = await s.get(User, request.id)
                if user is None:
                    await abort(context, grpc.StatusCode.NOT_FOUND, f"user {request.id} not found")
                if request.HasField("name"):
                    user.name = request.name
                if new_hash is not None:
                    user.password_hash = new_hash
                    revoke_user_tokens(s, user.id)
                if request.HasField("email"):
                    user.email = request.email
                if request.HasField("enabled"):
                    if user.enabled and not request.enabled:
                        revoke_user_tokens(s, user.id)
                    user.enabled = request.enabled
                if request.HasField("default_project_id"):
                    user.default_project_id = request.default_project_id or None
                if request.HasField("description"):
                    user.description = request.description
                if request.HasField("extra_json"):
                    user.extra = {**(user.extra or {}), **extra}
        except IntegrityError:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, "user name already taken")
        return identity_pb2.UpdateUserResponse(user=user_pb(user))

    async def DeleteUser(self, request: identity_pb2.DeleteUserRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            user = await s.get(User, request.id)
            if user is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"user {request.id} not found")
            await s.execute(delete(RoleAssignment).where(RoleAssignment.user_id == user.id))
            await s.delete(user)
            revoke_user_tokens(s, request.id)
        return identity_pb2.DeleteUserResponse()

    # ------------------------------------------------------------------ roles

    async def ListRoles(self, request: identity_pb2.ListRolesRequest, context: Any) -> Any:
        await self._seeder.ensure()
        query = select(Role).order_by(Role.name)
        if request.name:
            query = query.where(Role.name == request.name)
        async with self._sessions() as s:
            rows = await s.scalars(query)
            return identity_pb2.ListRolesResponse(
                roles=[identity_pb2.Role(id=r.id, name=r.name) for r in rows]
            )

    async def CreateRole(self, request: identity_pb2.CreateRoleRequest, context: Any) -> Any:
        await self._seeder.ensure()
        if not request.name:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "role name is required")
        role = Role(id=new_id(), name=request.name)
        try:
            async with self._sessions.begin() as s:
                s.add(role)
        except IntegrityError:
            await abort(
                context, grpc.StatusCode.ALREADY_EXISTS, f"role {request.name} already exists"
            )
        return identity_pb2.CreateRoleResponse(role=identity_pb2.Role(id=role.id, name=role.name))

    async def DeleteRole(self, request: identity_pb2.DeleteRoleRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            role = await s.get(Role, request.id)
            if role is None:
                await abort(context, grpc.StatusCode.NOT_FOUND, f"role {request.id} not found")
            if role.name in POLICY_ROLES:
                await abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"role {role.name} cannot be deleted: this cloud's policies name it",
                )
            grants = (
                await s.execute(
                    delete(RoleAssignment)
                    .where(RoleAssignment.role_id == role.id)
                    .returning(RoleAssignment.user_id, RoleAssignment.project_id)
                )
            ).all()
            # Tokens carry their roles: those scoped where the role was held go.
            for user_id, project_id in sorted(set(grants)):
                revoke_user_tokens(s, user_id, project_id)
            await s.delete(role)
        return identity_pb2.DeleteRoleResponse()

    async def _grant_parts(
        self, s: AsyncSession, context: Any, user_id: str, project_id: str, role_ref: str
    ) -> tuple[User, Project, Role]:
        user = await s.get(User, user_id)
        if user is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"user {user_id} not found")
        project = await s.get(Project, project_id)
        if project is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"project {project_id} not found")
        role = await self._role(s, role_ref)
        if role is None:
            await abort(context, grpc.StatusCode.NOT_FOUND, f"role {role_ref} not found")
        return user, project, role

    async def AssignRole(self, request: identity_pb2.AssignRoleRequest, context: Any) -> Any:
        await self._seeder.ensure()
        try:
            async with self._sessions.begin() as s:
                user, project, role = await self._grant_parts(
                    s, context, request.user_id, request.project_id, request.role
                )
                exists = await s.scalar(
                    select(RoleAssignment.id).where(
                        RoleAssignment.user_id == user.id,
                        RoleAssignment.project_id == project.id,
                        RoleAssignment.role_id == role.id,
                    )
                )
                if exists is None:
                    s.add(RoleAssignment(user_id=user.id, project_id=project.id, role_id=role.id))
        except IntegrityError:
            # A concurrent identical grant won the race: the grant holds, which is the goal.
            pass
        return identity_pb2.AssignRoleResponse()

    async def UnassignRole(self, request: identity_pb2.UnassignRoleRequest, context: Any) -> Any:
        await self._seeder.ensure()
        async with self._sessions.begin() as s:
            user, project, role = await self._grant_parts(
                s, context, request.user_id, request.project_id, request.role
            )
            gone = await s.execute(
                delete(RoleAssignment)
                .where(
                    RoleAssignment.user_id == user.id,
                    RoleAssignment.project_id == project.id,
                    RoleAssignment.role_id == role.id,
                )
                .returning(RoleAssignment.id)
            )
            if gone.first() is None:
                await abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"role {role.name} is not granted to {user.name} on {project.name}",
                )
            # Tokens carry their roles: the user's tokens on the project go, so none keeps
            # the role (a token scoped elsewhere carries none of this project's roles).
            revoke_user_tokens(s, user.id, project.id)
        return identity_pb2.UnassignRoleResponse()

    async def ListRoleAssignments(
        self, request: identity_pb2.ListRoleAssignmentsRequest, context: Any
    ) -> Any:
        await self._seeder.ensure()
        query = (
            select(RoleAssignment, Role)
            .join(Role, Role.id == RoleAssignment.role_id)
            .order_by(RoleAssignment.id)
        )
        if request.user_id:
            query = query.where(RoleAssignment.user_id == request.user_id)
        if request.project_id:
            query = query.where(RoleAssignment.project_id == request.project_id)
        if request.role:
            query = query.where(or_(Role.id == request.role, Role.name == request.role))
        async with self._sessions() as s:
            rows = (await s.execute(query)).all()
        return identity_pb2.ListRoleAssignmentsResponse(
            assignments=[
                identity_pb2.RoleAssignment(
                    user_id=a.user_id, project_id=a.project_id, role_id=r.id, role_name=r.name
                )
                for a, r in rows
            ]
        )

    # ------------------------------------------------------------------ token revocation

    async def RevokeTokens(self, request: identity_pb2.RevokeTokensRequest, context: Any) -> Any:
        if bool(request.audit_id) == bool(request.user_id):
            await abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "give exactly one of audit_id and user_id",
            )
        if len(request.audit_id) > 64 or len(request.user_id) > 64:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "id longer than 64")
        async with self._sessions.begin() as s:
            if request.user_id:
                row = revoke_user_tokens(s, request.user_id)
            else:
                moment = now()
                latest = moment + timedelta(seconds=MAX_TOKEN_TTL_S)
                asked: datetime = (
                    request.expires_at.ToDatetime(tzinfo=UTC)
                    if request.HasField("expires_at")
                    else latest
                )
                row = TokenRevocation(
                    audit_id=request.audit_id,
                    issued_before=moment,
                    expires_at=min(max(asked, moment), latest),
                )
                s.add(row)
            await s.flush()
            return identity_pb2.RevokeTokensResponse(revocation=revocation_pb(row))

    async def ListRevocations(
        self, request: identity_pb2.ListRevocationsRequest, context: Any
    ) -> Any:
        moment = now()
        async with self._sessions.begin() as s:
            # Expired revocations match no live token: drop them as they are read.
            await s.execute(delete(TokenRevocation).where(TokenRevocation.expires_at <= moment))
            rows = await s.scalars(
                select(TokenRevocation)
                .where(TokenRevocation.id > request.after_id)
                .order_by(TokenRevocation.id)
            )
            return identity_pb2.ListRevocationsResponse(
                revocations=[revocation_pb(r) for r in rows]
            )
