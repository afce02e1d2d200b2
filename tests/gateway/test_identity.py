"""Identity v3: versions, tokens, and the admin API for projects, users and roles."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta

from controlplane.servicetoken import password_auth
from gateway.auth.keys import KeyRepository
from gateway.auth.tokens import TokenSigner
from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape


async def test_identity_versions_are_a_300_and_v3_is_stable(cloud: Cloud) -> None:
    root = await cloud.client.get("/identity")
    assert root.status_code == 300
    assert root.json()["versions"]["values"][0]["id"].startswith("v3")
    v3 = await cloud.client.get("/identity/v3")
    assert v3.json()["version"]["status"] == "stable"
    assert v3.json()["version"]["links"][0]["href"] == "http://loom.test/identity/v3/"


async def test_a_password_token_carries_roles_and_the_service_catalog(cloud: Cloud) -> None:
    demo = cloud.seed.user("demo")
    assert demo is not None
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "demo",
                        "domain": {"name": "Default"},
                        "password": demo.password,
                    }
                },
            },
            "scope": {"project": {"name": "demo", "domain": {"name": "Default"}}},
        }
    }
    r = await cloud.client.post("/identity/v3/auth/tokens", json=body)
    assert r.status_code == 201
    assert r.headers["x-subject-token"]
    assert_shape("identity_token", r.json())
    token = r.json()["token"]
    assert sorted(role["name"] for role in token["roles"]) == ["member", "reader"]
    urls = {s["type"]: s["endpoints"][0]["url"] for s in token["catalog"]}
    assert urls == {
        "identity": "http://loom.test/identity",
        "compute": "http://loom.test/compute/v2.1",
        "image": "http://loom.test/image",
        "placement": "http://loom.test/placement",
        "network": "http://loom.test/network",
    }
    assert {e["region"] for s in token["catalog"] for e in s["endpoints"]} == {"RegionOne"}


async def test_the_admin_token_implies_member_and_reader(cloud: Cloud) -> None:
    h = await cloud.headers("admin")
    r = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": h["X-Auth-Token"]}
    )
    assert sorted(role["name"] for role in r.json()["token"]["roles"]) == [
        "admin",
        "member",
        "reader",
    ]


async def test_a_wrong_password_is_a_keystone_shaped_401(cloud: Cloud) -> None:
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "demo", "domain": {"id": "default"}, "password": "x"}
                },
            }
        }
    }
    r = await cloud.client.post("/identity/v3/auth/tokens", json=body)
    assert r.status_code == 401
    assert_shape("keystone_error", r.json())


async def test_a_malformed_auth_body_is_400(cloud: Cloud) -> None:
    r = await cloud.client.post(
        "/identity/v3/auth/tokens", json={"auth": {"identity": {"methods": "password"}}}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == 400


async def test_validating_a_token_returns_it_and_head_checks_it(cloud: Cloud) -> None:
    h = await cloud.headers()
    subject = await cloud.token()
    got = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": subject}
    )
    assert got.status_code == 200
    assert got.headers["x-subject-token"] == subject
    assert_shape("identity_token", got.json())
    head = await cloud.client.head(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": subject}
    )
    assert head.status_code == 200
    bogus = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": "x.y"}
    )
    assert bogus.status_code == 404


async def test_a_token_rescopes_with_the_token_method(cloud: Cloud) -> None:
    admin_token = await cloud.token("admin")
    body = {
        "auth": {
            "identity": {"methods": ["token"], "token": {"id": admin_token}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }
    }
    r = await cloud.client.post("/identity/v3/auth/tokens", json=body)
    assert r.status_code == 201
    assert r.json()["token"]["project"]["name"] == "admin"


async def test_a_rescoped_token_keeps_the_first_tokens_expiry_and_methods(cloud: Cloud) -> None:
    first = await cloud.client.post(
        "/identity/v3/auth/tokens",
        json=password_auth("admin", cloud.seed.user("admin").password, "admin"),
    )
    assert first.status_code == 201, first.text
    # Token times are whole seconds: a rescope in a later second would otherwise expire later.
    await asyncio.sleep(1.1)
    body = {
        "auth": {
            "identity": {"methods": ["token"], "token": {"id": first.headers["X-Subject-Token"]}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }
    }
    r = await cloud.client.post("/identity/v3/auth/tokens", json=body)
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert token["expires_at"] == first.json()["token"]["expires_at"]
    assert token["issued_at"] > first.json()["token"]["issued_at"]
    assert sorted(token["methods"]) == ["password", "token"]


async def test_an_admin_manages_projects_users_and_grants(cloud: Cloud) -> None:
    h = await cloud.headers("admin")
    p = await cloud.client.post(
        "/identity/v3/projects", json={"project": {"name": "team", "description": "t"}}, headers=h
    )
    assert p.status_code == 201
    pid = p.json()["project"]["id"]
    dup = await cloud.client.post(
        "/identity/v3/projects", json={"project": {"name": "team"}}, headers=h
    )
    assert dup.status_code == 409
    u = await cloud.client.post(
        "/identity/v3/users",
        json={"user": {"name": "carol", "password": "pw-carol", "default_project_id": pid}},
        headers=h,
    )
    assert u.status_code == 201
    assert "password" not in u.json()["user"]
    uid = u.json()["user"]["id"]
    reader = (await cloud.client.get("/identity/v3/roles?name=reader", headers=h)).json()["roles"][
        0
    ]["id"]
    grant = f"/identity/v3/projects/{pid}/users/{uid}/roles/{reader}"
    assert (await cloud.client.put(grant, headers=h)).status_code == 204
    assert (await cloud.client.head(grant, headers=h)).status_code == 204
    listed = await cloud.client.get(
        f"/identity/v3/role_assignments?user.id={uid}&include_names", headers=h
    )
    assignment = listed.json()["role_assignments"][0]
    assert (
        assignment["role"]["name"],
        assignment["user"]["name"],
        assignment["scope"]["project"]["name"],
    ) == (
        "reader",
        "carol",
        "team",
    )
    token = await cloud.token("carol", project="team", password="pw-carol")
    assert token
    assert (await cloud.client.delete(grant, headers=h)).status_code == 204
    assert (await cloud.client.head(grant, headers=h)).status_code == 404
    assert (await cloud.client.delete(f"/identity/v3/users/{uid}", headers=h)).status_code == 204
    assert (await cloud.client.delete(f"/identity/v3/projects/{pid}", headers=h)).status_code == 204
    assert (await cloud.client.get(f"/identity/v3/projects/{pid}", headers=h)).status_code == 404


async def test_members_cannot_use_the_identity_admin_api(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    assert (await cloud.client.get("/identity/v3/users", headers=h)).status_code == 403
    r = await cloud.client.post("/identity/v3/projects", json={"project": {"name": "x"}}, headers=h)
    assert r.status_code == 403
    assert r.json()["error"]["title"] == "Forbidden"


async def test_unknown_keys_in_a_project_are_400(cloud: Cloud) -> None:
    r = await cloud.client.post(
        "/identity/v3/projects",
        json={"project": {"name": "x", "colour": "red"}},
        headers=await cloud.headers("admin"),
    )
    assert r.status_code == 400
    assert "'colour' was unexpected" in r.json()["error"]["message"]


async def test_only_the_default_domain_exists(cloud: Cloud) -> None:
    h = await cloud.headers()
    assert (await cloud.client.get("/identity/v3/domains/default", headers=h)).json()["domain"][
        "name"
    ] == "Default"
    assert (await cloud.client.get("/identity/v3/domains/other", headers=h)).status_code == 404


async def test_a_user_or_project_in_a_domain_that_does_not_exist_is_404_and_not_made(
    cloud: Cloud,
) -> None:
    h = await cloud.headers("admin")
    for path, body in (
        ("users", {"user": {"name": "u-elsewhere", "domain_id": "d1f3"}}),
        ("projects", {"project": {"name": "p-elsewhere", "domain_id": "d1f3"}}),
    ):
        r = await cloud.client.post(f"/identity/v3/{path}", json=body, headers=h)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["message"] == "Could not find domain: d1f3."
        listed = (await cloud.client.get(f"/identity/v3/{path}", headers=h)).json()[path]
        assert not [x for x in listed if x["name"].endswith("-elsewhere")]
    made = await cloud.client.post(
        "/identity/v3/users", json={"user": {"name": "u-here", "domain_id": "default"}}, headers=h
    )
    assert made.status_code == 201, made.text


async def test_services_and_endpoints_mirror_the_token_catalog(cloud: Cloud) -> None:
    h = await cloud.headers()
    services = (await cloud.client.get("/identity/v3/services", headers=h)).json()["services"]
    assert sorted(s["type"] for s in services) == [
        "compute",
        "identity",
        "image",
        "network",
        "placement",
    ]
    compute = next(s for s in services if s["type"] == "compute")
    endpoints = (
        await cloud.client.get(f"/identity/v3/endpoints?service_id={compute['id']}", headers=h)
    ).json()["endpoints"]
    assert {e["interface"] for e in endpoints} == {"public", "internal", "admin"}
    assert {e["url"] for e in endpoints} == {"http://loom.test/compute/v2.1"}


def _keys(cloud: Cloud) -> KeyRepository:
    return KeyRepository(cloud.catalog.cfg.data_path / "fernet-keys")


async def _flavors(cloud: Cloud, token: str) -> int:
    r = await cloud.client.get("/compute/v2.1/flavors", headers={"X-Auth-Token": token})
    return r.status_code


async def test_a_token_outlives_a_rotation_and_not_the_removal_of_its_key(cloud: Cloud) -> None:
    token = await cloud.token()  # signed by key 0, the only one
    keys = _keys(cloud)
    keys.rotate(max_active_keys=2)  # that key is now 1, the primary; a new 0 is staged
    assert await _flavors(cloud, token) == 200
    keys.rotate(max_active_keys=2)  # 0 becomes 2, the primary; 1 is removed
    assert keys.indices() == [0, 2]
    assert await _flavors(cloud, token) == 401
    after = await cloud.token()
    assert await _flavors(cloud, after) == 200
    h = {"X-Auth-Token": after, "X-Subject-Token": token}
    assert (await cloud.client.get("/identity/v3/auth/tokens", headers=h)).status_code == 404


async def test_tampered_and_expired_tokens_are_401(cloud: Cloud) -> None:
    token = await cloud.token()
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[len(raw) // 2] ^= 0x01
    assert await _flavors(cloud, base64.urlsafe_b64encode(bytes(raw)).decode()) == 401
    h = await cloud.headers()
    valid = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": token}
    )
    user_id, project_id = (
        valid.json()["token"]["user"]["id"],
        valid.json()["token"]["project"]["id"],
    )
    expired, _ = TokenSigner(_keys(cloud), 3600).issue(
        user_id=user_id,
        project_id=project_id,
        roles=("member", "reader"),
        now=datetime.now(UTC) - timedelta(hours=2),
    )
    r = await cloud.client.get("/compute/v2.1/flavors", headers={"X-Auth-Token": expired})
    assert r.status_code == 401
    assert "expired" in r.text


async def test_validation_shows_the_names_a_token_does_not_carry(cloud: Cloud) -> None:
    h = await cloud.headers("admin")
    subject = await cloud.token()
    issued = await cloud.client.post(
        "/identity/v3/auth/tokens",
        json={"auth": {"identity": {"methods": ["token"], "token": {"id": subject}}}},
    )
    assert issued.status_code == 201
    assert issued.json()["token"]["user"]["name"] == "demo"
    got = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": subject}
    )
    token = got.json()["token"]
    assert (token["user"]["name"], token["project"]["name"]) == ("demo", "demo")
    roles = (await cloud.client.get("/identity/v3/roles", headers=h)).json()["roles"]
    ids = {r["name"]: r["id"] for r in roles}
    assert sorted((r["name"], r["id"]) for r in token["roles"]) == [
        ("member", ids["member"]),
        ("reader", ids["reader"]),
    ]
    assert len(subject) < 255


async def test_a_user_keeps_the_attributes_a_client_gave_beyond_identity_s_own(
    cloud: Cloud,
) -> None:
    admin = await cloud.headers("admin")
    body = {"user": {"name": "extra-u", "password": "pw", "project_id": "p-1", "team": "blue"}}
    r = await cloud.client.post("/identity/v3/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()["user"]
    assert (made["project_id"], made["team"], made["name"]) == ("p-1", "blue", "extra-u")
    uid = made["id"]
    r = await cloud.client.patch(
        f"/identity/v3/users/{uid}", json={"user": {"team": "red", "floor": 3}}, headers=admin
    )
    assert r.status_code == 200, r.text
    shown = (await cloud.client.get(f"/identity/v3/users/{uid}", headers=admin)).json()["user"]
    assert (shown["project_id"], shown["team"], shown["floor"]) == ("p-1", "red", 3)
    # A client's attribute never stands in for a standard one.
    assert shown["id"] == uid


async def test_resource_options_loom_does_not_enforce_are_refused(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    users = "/identity/v3/users"
    body = {"user": {"name": "opt-u", "password": "pw", "options": {"lock_password": True}}}
    r = await cloud.client.post(users, json=body, headers=admin)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["code"], error["title"]) == (400, "Bad Request")
    assert "lock_password" in error["message"]
    # No options, or unsetting one, is what Loom has: accepted.
    body = {"user": {"name": "opt-u", "password": "pw", "options": {}}}
    r = await cloud.client.post(users, json=body, headers=admin)
    assert r.status_code == 201, r.text
    uid = r.json()["user"]["id"]
    assert r.json()["user"]["options"] == {}
    r = await cloud.client.patch(
        f"{users}/{uid}",
        json={"user": {"options": {"ignore_lockout_failure_attempts": None}}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    r = await cloud.client.patch(
        f"{users}/{uid}",
        json={"user": {"options": {"multi_factor_auth_enabled": True}}},
        headers=admin,
    )
    assert r.status_code == 400, r.text
    r = await cloud.client.post(
        "/identity/v3/projects",
        json={"project": {"name": "opt-p", "options": {"immutable": True}}},
        headers=admin,
    )
    assert r.status_code == 400, r.text
