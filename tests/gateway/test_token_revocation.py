"""Token revocation: DELETE /auth/tokens, a password change, a disable or a delete
revoking the user's tokens, and a role taken away revoking those on its project. Revoked
tokens answer 401 (404 as a subject)."""

from __future__ import annotations

import time

import httpx

from gateway.app import build_app
from gateway.auth.revocations import DEFAULT_INTERVAL_S
from gateway.conductor import DEFAULT_DEADLINE_S
from gateway.service import make_gateway
from tests.gateway.conftest import Cloud
from tests.support import polling

V3 = "/identity/v3"


async def _status(cloud: Cloud, token: str) -> int:
    r = await cloud.client.get(f"{V3}/auth/projects", headers={"X-Auth-Token": token})
    return r.status_code


async def _user(cloud: Cloud, name: str) -> str:
    await cloud.make_user(name, "member", "demo")
    h = await cloud.headers("admin")
    users = (await cloud.client.get(f"{V3}/users?name={name}", headers=h)).json()["users"]
    return str(users[0]["id"])


async def test_a_revoked_token_is_refused_and_no_longer_validates(cloud: Cloud) -> None:
    token = await cloud.token()
    other = await cloud.token()
    h = {"X-Auth-Token": token, "X-Subject-Token": token}
    assert (await cloud.client.head(f"{V3}/auth/tokens", headers=h)).status_code == 200
    assert (await cloud.client.delete(f"{V3}/auth/tokens", headers=h)).status_code == 204
    assert await _status(cloud, token) == 401
    check = await cloud.client.get(
        f"{V3}/auth/tokens", headers={"X-Auth-Token": other, "X-Subject-Token": token}
    )
    assert check.status_code == 404
    assert "revoked" in check.json()["error"]["message"]
    # Only that token: the same user's other token still works.
    assert await _status(cloud, other) == 200


async def test_a_user_cannot_revoke_another_users_token_but_an_admin_can(cloud: Cloud) -> None:
    await _user(cloud, "erin")
    victim = await cloud.token()
    erin = await cloud.token("erin", project="demo", password="pw-erin")
    refused = await cloud.client.delete(
        f"{V3}/auth/tokens", headers={"X-Auth-Token": erin, "X-Subject-Token": victim}
    )
    assert refused.status_code == 403
    assert await _status(cloud, victim) == 200
    admin = await cloud.token("admin")
    done = await cloud.client.delete(
        f"{V3}/auth/tokens", headers={"X-Auth-Token": admin, "X-Subject-Token": victim}
    )
    assert done.status_code == 204
    assert await _status(cloud, victim) == 401


async def _works_from_the_next_second(cloud: Cloud, user: str, password: str) -> None:
    """Token times are whole seconds: one issued in the second of a revocation counts as
    revoked, so a fresh sign-in works from the next second on."""
    deadline = time.monotonic() + 3
    while True:
        token = await cloud.token(user, project="demo", password=password)
        if await _status(cloud, token) == 200:
            return
        assert time.monotonic() < deadline, "a new token never worked"


async def test_a_password_change_revokes_the_users_tokens(cloud: Cloud) -> None:
    uid = await _user(cloud, "frank")
    before = await cloud.token("frank", project="demo", password="pw-frank")
    admin = await cloud.headers("admin")
    r = await cloud.client.patch(
        f"{V3}/users/{uid}", json={"user": {"password": "pw-new"}}, headers=admin
    )
    assert r.status_code == 200
    assert await _status(cloud, before) == 401
    await _works_from_the_next_second(cloud, "frank", "pw-new")


async def test_disabling_a_user_or_taking_a_role_away_revokes_their_tokens(
    cloud: Cloud,
) -> None:
    uid = await _user(cloud, "gina")
    admin = await cloud.headers("admin")
    token = await cloud.token("gina", project="demo", password="pw-gina")
    off = await cloud.client.patch(
        f"{V3}/users/{uid}", json={"user": {"enabled": False}}, headers=admin
    )
    assert off.status_code == 200
    assert await _status(cloud, token) == 401
    on = await cloud.client.patch(
        f"{V3}/users/{uid}", json={"user": {"enabled": True}}, headers=admin
    )
    assert on.status_code == 200
    await _works_from_the_next_second(cloud, "gina", "pw-gina")
    token = await cloud.token("gina", project="demo", password="pw-gina")
    demo = (await cloud.client.get(f"{V3}/projects?name=demo", headers=admin)).json()
    member = (await cloud.client.get(f"{V3}/roles?name=member", headers=admin)).json()
    grant = f"{V3}/projects/{demo['projects'][0]['id']}/users/{uid}/roles/"
    grant += member["roles"][0]["id"]
    assert (await cloud.client.delete(grant, headers=admin)).status_code == 204
    assert await _status(cloud, token) == 401


async def test_taking_a_role_away_on_one_project_leaves_the_users_tokens_on_another(
    cloud: Cloud,
) -> None:
    uid = await _user(cloud, "hugo")
    admin = await cloud.headers("admin")
    made = await cloud.client.post(
        f"{V3}/projects", json={"project": {"name": "side"}}, headers=admin
    )
    member = (await cloud.client.get(f"{V3}/roles?name=member", headers=admin)).json()
    grant = f"{V3}/projects/{made.json()['project']['id']}/users/{uid}/roles/"
    grant += member["roles"][0]["id"]
    assert (await cloud.client.put(grant, headers=admin)).status_code == 204
    on_demo = await cloud.token("hugo", project="demo", password="pw-hugo")
    on_side = await cloud.token("hugo", project="side", password="pw-hugo")
    assert (await cloud.client.delete(grant, headers=admin)).status_code == 204
    assert await _status(cloud, on_side) == 401
    assert await _status(cloud, on_demo) == 200


async def test_another_gateway_refuses_a_revoked_token_once_it_refreshes(cloud: Cloud) -> None:
    # A second gateway on the same services, as behind a balancer.
    other_gateway = make_gateway(cloud.catalog.cfg)
    transport = httpx.ASGITransport(app=build_app(other_gateway))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://loom.test") as other:
            token = await cloud.token()
            used = await other.get(f"{V3}/auth/projects", headers={"X-Auth-Token": token})
            assert used.status_code == 200
            h = {"X-Auth-Token": token, "X-Subject-Token": token}
            assert (await cloud.client.delete(f"{V3}/auth/tokens", headers=h)).status_code == 204

            async def refused() -> bool:
                r = await other.get(f"{V3}/auth/projects", headers={"X-Auth-Token": token})
                assert r.status_code in (200, 401)
                return r.status_code == 401

            # The other gateway reads new revocations at most DEFAULT_INTERVAL_S apart, each
            # read one call within the gateway's call deadline.
            await polling.eventually(
                refused,
                DEFAULT_INTERVAL_S + DEFAULT_DEADLINE_S,
                "the other gateway refusing the revoked token",
            )
    finally:
        await other_gateway.conductor.close()


async def test_deleting_a_role_takes_its_grants_and_the_tokens_that_carry_it(cloud: Cloud) -> None:
    uid = await _user(cloud, "ines")
    admin = await cloud.headers("admin")
    made = await cloud.client.post(f"{V3}/roles", json={"role": {"name": "auditor"}}, headers=admin)
    assert made.status_code == 201, made.text
    role_id = made.json()["role"]["id"]
    demo = (await cloud.client.get(f"{V3}/projects?name=demo", headers=admin)).json()
    grant = f"{V3}/projects/{demo['projects'][0]['id']}/users/{uid}/roles/{role_id}"
    assert (await cloud.client.put(grant, headers=admin)).status_code == 204
    token = await cloud.token("ines", project="demo", password="pw-ines")
    assert (await cloud.client.delete(f"{V3}/roles/{role_id}", headers=admin)).status_code == 204
    assert await _status(cloud, token) == 401
    assert (await cloud.client.get(f"{V3}/roles/{role_id}", headers=admin)).status_code == 404
    assert (await cloud.client.delete(f"{V3}/roles/{role_id}", headers=admin)).status_code == 404
    grants = await cloud.client.get(f"{V3}/role_assignments?user.id={uid}", headers=admin)
    assert grants.status_code == 200, grants.text
    held = [a["role"]["id"] for a in grants.json()["role_assignments"]]
    assert held  # the member role stays
    assert role_id not in held
    # The roles the policies name stay; a member may delete none.
    roles = (await cloud.client.get(f"{V3}/roles", headers=admin)).json()["roles"]
    for r in roles:
        if r["name"] in ("admin", "member", "reader"):
            gone = await cloud.client.delete(f"{V3}/roles/{r['id']}", headers=admin)
            assert gone.status_code == 403, gone.text
    member = await cloud.headers("demo")
    some = roles[0]["id"]
    assert (await cloud.client.delete(f"{V3}/roles/{some}", headers=member)).status_code == 403
