"""The policy matrix: role by endpoint by own or other project, as Nova's defaults have it."""

from __future__ import annotations

from typing import Any

from tests.gateway.conftest import Cloud

PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBZ2kFHqVtD6Bw4qK1hJ5QEFgXDvRmiXoHTZ5bRJ0q4S p@x"
SERVER = {
    "server": {
        "name": "vm",
        "flavorRef": "1",
        "imageRef": "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55",
        "networks": "none",
    }
}


async def test_each_role_gets_exactly_what_the_default_policy_allows(cloud: Cloud) -> None:
    await cloud.make_user("rita", "reader", "demo")
    await cloud.make_user("otto", "member", "other")
    tokens = {
        "admin": await cloud.token("admin"),
        "member": await cloud.token("demo"),
        "reader": await cloud.token("rita", project="demo", password="pw-rita"),
        "stranger": await cloud.token("otto", project="other", password="pw-otto"),
    }
    member = {"X-Auth-Token": tokens["member"], "OpenStack-API-Version": "compute 2.64"}
    group = await cloud.client.post(
        "/compute/v2.1/os-server-groups",
        json={"server_group": {"name": "g", "policy": "affinity"}},
        headers=member,
    )
    gid = group.json()["server_group"]["id"]
    image = await cloud.client.post(
        "/image/v2/images", json={"name": "i", "visibility": "private"}, headers=member
    )
    iid = image.json()["id"]
    demo_project = image.json()["owner"]
    sg = f"/compute/v2.1/os-server-groups/{gid}"
    img = f"/image/v2/images/{iid}"
    new_group = {"server_group": {"name": "n", "policy": "affinity"}}
    # (who, method, path, body, expected status)
    matrix: list[tuple[str, str, str, Any, int]] = [
        ("reader", "GET", "/compute/v2.1/flavors", None, 200),
        (
            "reader",
            "POST",
            "/compute/v2.1/flavors",
            {"flavor": {"name": "f", "ram": 1, "vcpus": 1, "disk": 0}},
            403,
        ),
        (
            "member",
            "POST",
            "/compute/v2.1/flavors",
            {"flavor": {"name": "f", "ram": 1, "vcpus": 1, "disk": 0}},
            403,
        ),
        ("reader", "GET", "/compute/v2.1/os-keypairs", None, 200),
        (
            "reader",
            "POST",
            "/compute/v2.1/os-keypairs",
            {"keypair": {"name": "k", "public_key": PUB}},
            403,
        ),
        (
            "member",
            "POST",
            "/compute/v2.1/os-keypairs",
            {"keypair": {"name": "k", "public_key": PUB}},
            201,
        ),
        ("reader", "GET", sg, None, 200),
        ("reader", "POST", "/compute/v2.1/os-server-groups", new_group, 403),
        ("reader", "DELETE", sg, None, 403),
        ("stranger", "GET", sg, None, 404),
        ("stranger", "DELETE", sg, None, 404),
        ("admin", "GET", sg, None, 200),
        ("reader", "GET", img, None, 200),
        ("reader", "DELETE", img, None, 403),
        ("reader", "POST", "/image/v2/images", {"name": "x"}, 403),
        ("stranger", "GET", img, None, 404),
        ("stranger", "DELETE", img, None, 404),
        ("reader", "POST", "/compute/v2.1/servers", SERVER, 403),
        (
            "reader",
            "POST",
            "/compute/v2.1/servers/9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55/action",
            {"os-stop": None},
            403,
        ),
        (
            "reader",
            "DELETE",
            "/compute/v2.1/servers/9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55",
            None,
            403,
        ),
        *[
            (
                "reader",
                "POST",
                "/compute/v2.1/servers/9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55/action",
                action,
                403,
            )
            for action in (
                {"pause": None},
                {"suspend": None},
                {"lock": None},
                {"unlock": None},
                {"shelve": None},
                {"unshelve": None},
                {"rebuild": {"imageRef": "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55"}},
            )
        ],
        (
            "member",
            "POST",
            "/compute/v2.1/servers/9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55/action",
            {"shelveOffload": None},
            403,
        ),
        ("member", "GET", "/compute/v2.1/servers?all_tenants=1", None, 403),
        ("stranger", "GET", f"/compute/v2.1/os-quota-sets/{demo_project}", None, 403),
        (
            "member",
            "PUT",
            f"/compute/v2.1/os-quota-sets/{demo_project}",
            {"quota_set": {"cores": 1}},
            403,
        ),
        ("member", "GET", "/compute/v2.1/os-services", None, 403),
        ("reader", "GET", "/compute/v2.1/os-hypervisors", None, 403),
        ("member", "GET", "/compute/v2.1/os-availability-zone/detail", None, 403),
        ("member", "GET", "/identity/v3/users", None, 403),
        ("admin", "GET", "/identity/v3/users", None, 200),
    ]
    wrong = []
    for who, method, path, body, expected in matrix:
        headers = {"X-Auth-Token": tokens[who], "OpenStack-API-Version": "compute 2.64"}
        r = await cloud.client.request(method, path, json=body, headers=headers)
        if r.status_code != expected:
            wrong.append(f"{who} {method} {path}: {r.status_code}, expected {expected}")
    assert wrong == []
