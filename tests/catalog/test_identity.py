"""IdentityService: seeding, passwords, projects, users and role grants."""

from __future__ import annotations

import grpc
import pytest
from loom.catalog.v1 import flavors_pb2
from loom.identity.v1 import identity_pb2

from controlplane.catalog.seed import seed_flavors
from controlplane.identity.passwords import hash_password, verify_password
from controlplane.identity.seed import seed_identity
from controlplane.seedfile import load_or_create
from tests.catalog.conftest import Stubs


def test_a_password_hash_is_salted_and_verifies_only_the_right_password() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first != second
    assert first.startswith("scrypt$")
    assert verify_password("correct horse", first)
    assert not verify_password("wrong horse", first)
    assert not verify_password("correct horse", "not-a-hash")


async def test_the_seed_creates_roles_admin_demo_and_the_service_user_and_is_idempotent(
    stubs: Stubs,
) -> None:
    roles = await stubs.identity.ListRoles(identity_pb2.ListRolesRequest())
    assert {r.name for r in roles.roles} == {"admin", "member", "reader"}
    seed = load_or_create(stubs.catalog.cfg.data_path)
    assert await seed_identity(stubs.catalog.sessions, seed) == 0
    await stubs.flavors.ListFlavors(flavors_pb2.ListFlavorsRequest())
    assert await seed_flavors(stubs.catalog.sessions, seed) == 0
    projects = await stubs.identity.ListProjects(identity_pb2.ListProjectsRequest())
    assert sorted(p.name for p in projects.projects) == ["admin", "demo", "service"]
    grants = await stubs.identity.ListRoleAssignments(identity_pb2.ListRoleAssignmentsRequest())
    assert sorted(a.role_name for a in grants.assignments) == ["admin", "admin", "member"]


async def test_the_seeded_demo_user_authenticates_with_the_seed_file_password(
    stubs: Stubs,
) -> None:
    seed = load_or_create(stubs.catalog.cfg.data_path)
    demo = seed.user("demo")
    assert demo is not None
    reply = await stubs.identity.Authenticate(
        identity_pb2.AuthenticateRequest(
            user_name="demo", password=demo.password, project_name="demo"
        )
    )
    assert reply.user.name == "demo"
    assert reply.project.name == "demo"
    assert [r.name for r in reply.roles] == ["member"]


async def test_a_wrong_password_is_unauthenticated(stubs: Stubs) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.Authenticate(
            identity_pb2.AuthenticateRequest(user_name="demo", password="nope", project_name="demo")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_user_without_a_role_on_the_project_is_denied(stubs: Stubs) -> None:
    seed = load_or_create(stubs.catalog.cfg.data_path)
    demo = seed.user("demo")
    assert demo is not None
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.Authenticate(
            identity_pb2.AuthenticateRequest(
                user_name="demo", password=demo.password, project_name="admin"
            )
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_duplicate_project_names_already_exist(stubs: Stubs) -> None:
    await stubs.identity.CreateProject(
        identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="p1", enabled=True))
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="p1", enabled=True))
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_granting_twice_is_idempotent_and_revoking_twice_is_not_found(stubs: Stubs) -> None:
    project = (
        await stubs.identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="p2", enabled=True))
        )
    ).project
    user = (
        await stubs.identity.CreateUser(
            identity_pb2.CreateUserRequest(
                user=identity_pb2.User(name="u2", enabled=True), password="pw-u2"
            )
        )
    ).user
    for _ in range(2):
        await stubs.identity.AssignRole(
            identity_pb2.AssignRoleRequest(user_id=user.id, project_id=project.id, role="reader")
        )
    grants = await stubs.identity.ListRoleAssignments(
        identity_pb2.ListRoleAssignmentsRequest(user_id=user.id)
    )
    assert [a.role_name for a in grants.assignments] == ["reader"]
    await stubs.identity.UnassignRole(
        identity_pb2.UnassignRoleRequest(user_id=user.id, project_id=project.id, role="reader")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.UnassignRole(
            identity_pb2.UnassignRoleRequest(user_id=user.id, project_id=project.id, role="reader")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_project_removes_its_grants(stubs: Stubs) -> None:
    project = (
        await stubs.identity.CreateProject(
            identity_pb2.CreateProjectRequest(project=identity_pb2.Project(name="p3", enabled=True))
        )
    ).project
    user = (
        await stubs.identity.CreateUser(
            identity_pb2.CreateUserRequest(
                user=identity_pb2.User(name="u3", enabled=True), password="pw"
            )
        )
    ).user
    await stubs.identity.AssignRole(
        identity_pb2.AssignRoleRequest(user_id=user.id, project_id=project.id, role="member")
    )
    await stubs.identity.DeleteProject(identity_pb2.DeleteProjectRequest(id=project.id))
    grants = await stubs.identity.ListRoleAssignments(
        identity_pb2.ListRoleAssignmentsRequest(user_id=user.id)
    )
    assert list(grants.assignments) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.GetProject(identity_pb2.GetProjectRequest(id=project.id))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_changing_a_password_takes_effect(stubs: Stubs) -> None:
    user = (
        await stubs.identity.CreateUser(
            identity_pb2.CreateUserRequest(
                user=identity_pb2.User(name="u4", enabled=True), password="old-pw"
            )
        )
    ).user
    await stubs.identity.UpdateUser(identity_pb2.UpdateUserRequest(id=user.id, password="new-pw"))
    reply = await stubs.identity.Authenticate(
        identity_pb2.AuthenticateRequest(user_name="u4", password="new-pw")
    )
    assert reply.user.id == user.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.identity.Authenticate(
            identity_pb2.AuthenticateRequest(user_name="u4", password="old-pw")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
