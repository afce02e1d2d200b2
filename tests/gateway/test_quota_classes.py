"""os-quota-class-sets: stored defaults that every project without a limit of its own follows."""

from __future__ import annotations

from tests.gateway.conftest import Cloud

C = "/compute/v2.1"


async def _demo_project(cloud: Cloud) -> str:
    h = await cloud.headers("demo")
    r = await cloud.client.get(
        "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": h["X-Auth-Token"]}
    )
    return str(r.json()["token"]["project"]["id"])


async def test_updating_the_default_class_changes_every_projects_defaults(cloud: Cloud) -> None:
    admin = await cloud.headers("admin")
    demo = await cloud.headers("demo")
    project = await _demo_project(cloud)
    r = await cloud.client.put(
        f"{C}/os-quota-class-sets/default",
        json={"quota_class_set": {"cores": 7, "instances": "3", "floating_ips": 110}},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    updated = r.json()["quota_class_set"]
    assert "id" not in updated
    assert (updated["cores"], updated["instances"], updated["floating_ips"]) == (7, 3, 110)
    shown = (await cloud.client.get(f"{C}/os-quota-class-sets/default", headers=admin)).json()
    assert shown["quota_class_set"]["id"] == "default"
    assert shown["quota_class_set"]["cores"] == 7
    # The project follows the class: its quota set, its defaults and its absolute limits.
    qs = (await cloud.client.get(f"{C}/os-quota-sets/{project}", headers=demo)).json()
    assert (qs["quota_set"]["cores"], qs["quota_set"]["instances"]) == (7, 3)
    assert qs["quota_set"]["floating_ips"] == 110
    defaults = await cloud.client.get(f"{C}/os-quota-sets/{project}/defaults", headers=demo)
    assert defaults.json()["quota_set"]["cores"] == 7
    limits = (await cloud.client.get(f"{C}/limits", headers=demo)).json()["limits"]["absolute"]
    assert (limits["maxTotalCores"], limits["maxTotalInstances"]) == (7, 3)
    # A project's own limit still wins over the class.
    r = await cloud.client.put(
        f"{C}/os-quota-sets/{project}", json={"quota_set": {"cores": 9}}, headers=admin
    )
    assert r.status_code == 200, r.text
    limits = (await cloud.client.get(f"{C}/limits", headers=demo)).json()["limits"]["absolute"]
    assert (limits["maxTotalCores"], limits["maxTotalInstances"]) == (9, 3)


async def test_a_quota_class_shows_the_fields_of_each_microversion(cloud: Cloud) -> None:
    v21 = await cloud.headers("admin")
    v250 = await cloud.headers("admin", version="2.50")
    v257 = await cloud.headers("admin", version="2.57")
    old = (await cloud.client.get(f"{C}/os-quota-class-sets/gold", headers=v21)).json()
    assert old["quota_class_set"]["id"] == "gold"
    assert {"fixed_ips", "security_groups", "injected_files"} <= set(old["quota_class_set"])
    assert "server_groups" not in old["quota_class_set"]
    mid = (await cloud.client.get(f"{C}/os-quota-class-sets/gold", headers=v250)).json()
    assert {"server_groups", "server_group_members", "injected_files"} <= set(
        mid["quota_class_set"]
    )
    assert "fixed_ips" not in mid["quota_class_set"]
    new = (await cloud.client.get(f"{C}/os-quota-class-sets/gold", headers=v257)).json()
    assert "injected_files" not in new["quota_class_set"]
    r = await cloud.client.put(
        f"{C}/os-quota-class-sets/gold",
        json={"quota_class_set": {"fixed_ips": 5}},
        headers=v250,
    )
    assert r.status_code == 400, r.text
    assert "badRequest" in r.json()


async def test_only_an_admin_may_read_or_update_a_quota_class(cloud: Cloud) -> None:
    demo = await cloud.headers("demo")
    r = await cloud.client.get(f"{C}/os-quota-class-sets/default", headers=demo)
    assert r.status_code == 403
    r = await cloud.client.put(
        f"{C}/os-quota-class-sets/default", json={"quota_class_set": {"cores": 1}}, headers=demo
    )
    assert r.status_code == 403
    r = await cloud.client.put(
        f"{C}/os-quota-class-sets/default",
        json={"quota_class_set": {"cores": -2}},
        headers=await cloud.headers("admin"),
    )
    assert r.status_code == 400
