"""The unmodified openstack CLI resizes, confirms, reverts, migrates and lists migrations
against a running stack (three simulated hosts on test:///)."""

from __future__ import annotations

import httpx
import pytest

from bench.client import resolve_cloud
from tests.e2e.support import boot_one_through_api, wait_for_hosts
from tests.e2e.test_openstack_clients import _wait_status, osc, ready_cloud
from tests.gateway.shapes import assert_shape
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

__all__ = ["ready_cloud"]  # the fixture, shared with the other client tests


def _show(cloud: Stack, name: str) -> dict[str, str]:
    shown: dict[str, str] = osc(cloud, "server", "show", name, "-f", "json", admin=True)
    return shown


def test_the_openstack_cli_resizes_confirms_reverts_migrates_and_live_migrates_a_server(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    created = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--wait",
        "vm1",
        "-f",
        "json",
    )
    vm = created["id"]
    before = _show(cloud, vm)["OS-EXT-SRV-ATTR:host"]

    osc(cloud, "server", "resize", "--flavor", "m1.small", "--wait", "vm1")
    _wait_status(cloud, "vm1", "VERIFY_RESIZE")
    moved = _show(cloud, vm)
    assert moved["OS-EXT-SRV-ATTR:host"] != before
    assert "m1.small" in str(moved["flavor"])
    osc(cloud, "server", "resize", "confirm", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")
    assert "m1.small" in str(_show(cloud, vm)["flavor"])

    osc(cloud, "server", "resize", "--flavor", "m1.medium", "--wait", "vm1")
    _wait_status(cloud, "vm1", "VERIFY_RESIZE")
    osc(cloud, "server", "resize", "revert", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")
    assert "m1.small" in str(_show(cloud, vm)["flavor"])

    host = _show(cloud, vm)["OS-EXT-SRV-ATTR:host"]
    osc(cloud, "server", "migrate", "--wait", vm, admin=True)
    _wait_status(cloud, "vm1", "VERIFY_RESIZE")
    assert _show(cloud, vm)["OS-EXT-SRV-ATTR:host"] != host
    osc(cloud, "server", "resize", "confirm", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")

    host = _show(cloud, vm)["OS-EXT-SRV-ATTR:host"]
    osc(cloud, "server", "migrate", "--live-migration", "--wait", vm, admin=True)
    _wait_status(cloud, "vm1", "ACTIVE")
    assert _show(cloud, vm)["OS-EXT-SRV-ATTR:host"] != host

    listed = osc(cloud, "server", "migration", "list", "-f", "json", admin=True)
    assert [(m["Type"], m["Status"]) for m in listed] == [
        ("live-migration", "completed"),
        ("migration", "confirmed"),
        ("resize", "reverted"),
        ("resize", "confirmed"),
    ]
    only_resizes = osc(
        cloud, "server", "migration", "list", "--type", "resize", "-f", "json", admin=True
    )
    assert len(only_resizes) == 2


def _api(cloud: Stack, user: str, version: str) -> httpx.Client:
    clouds = cloud.data_dir / "clouds.yaml"
    found = resolve_cloud("loom-admin" if user == "admin" else "loom", clouds)
    return httpx.Client(
        base_url=found.compute_url,
        headers={"X-Auth-Token": found.token, "OpenStack-API-Version": f"compute {version}"},
        timeout=30,
    )


def _wait_api_status(http: httpx.Client, sid: str, status: str) -> None:
    polling.wait_until(
        lambda: http.get(f"/servers/{sid}").json()["server"]["status"] == status,
        polling.boot_s(),
        f"{sid} {status}",
        every=0.3,
    )


async def test_the_move_api_refuses_what_it_cannot_do_and_shows_migrations_per_microversion(
    cloud: Stack,
) -> None:
    await wait_for_hosts(cloud, 3)
    sid = boot_one_through_api(cloud, "vm")
    action = f"/servers/{sid}/action"
    with _api(cloud, "demo", "2.96") as demo, _api(cloud, "admin", "2.96") as admin:
        small = next(
            f["id"] for f in demo.get("/flavors").json()["flavors"] if f["name"] == "m1.small"
        )
        tiny = next(
            f["id"] for f in demo.get("/flavors").json()["flavors"] if f["name"] == "m1.tiny"
        )
        # Refusals, each leaving the server as it was.
        assert demo.post(action, json={"migrate": None}).status_code == 403
        assert demo.post(action, json={"resize": {}}).status_code == 400
        assert demo.post(action, json={"resize": {"flavorRef": tiny}}).status_code == 400
        assert demo.post(action, json={"resize": {"flavorRef": "nope"}}).status_code == 400
        assert demo.post(action, json={"confirmResize": None}).status_code == 409
        assert demo.post(action, json={"revertResize": None}).status_code == 409
        r = admin.post(action, json={"migrate": {"host": "nowhere"}})
        assert r.status_code == 400, r.text
        with _api(cloud, "admin", "2.55") as old:
            assert old.post(action, json={"migrate": {"host": "x"}}).status_code == 400
        assert demo.get(f"/servers/{sid}").json()["server"]["status"] == "ACTIVE"

        r = demo.post(action, json={"resize": {"flavorRef": small, "OS-DCF:diskConfig": "GROW"}})
        assert r.status_code == 400, r.text
        # AUTO is taken as Nova's libvirt driver takes it (docs/compatibility.md).
        r = demo.post(action, json={"resize": {"flavorRef": small, "OS-DCF:diskConfig": "AUTO"}})
        assert r.status_code == 202, r.text
        _wait_api_status(demo, sid, "VERIFY_RESIZE")
        assert demo.post(action, json={"resize": {"flavorRef": tiny}}).status_code == 409
        r = demo.post(action, json={"confirmResize": None})
        assert r.status_code == 204, r.text
        _wait_api_status(demo, sid, "ACTIVE")

        # A live migration: refused variants first, then one that moves the server.
        live = {"os-migrateLive": {"host": None, "block_migration": "auto"}}
        assert demo.post(action, json=live).status_code == 403
        no_block = {"os-migrateLive": {"host": None, "block_migration": False}}
        assert admin.post(action, json=no_block).status_code == 400
        with _api(cloud, "admin", "2.30") as v230:
            forced = {"os-migrateLive": {"host": None, "block_migration": "auto", "force": True}}
            assert v230.post(action, json=forced).status_code == 400
        with _api(cloud, "admin", "2.24") as v224:
            auto = {"os-migrateLive": {"host": None, "block_migration": "auto"}}
            assert v224.post(action, json=auto).status_code == 400  # "auto" came in 2.25
        before = admin.get(f"/servers/{sid}").json()["server"]["OS-EXT-SRV-ATTR:host"]
        r = admin.post(action, json=live)
        assert r.status_code == 202, r.text

        def moved() -> bool:
            body = admin.get(f"/servers/{sid}").json()["server"]
            return bool(
                body["status"] == "ACTIVE"
                and body["OS-EXT-STS:task_state"] is None
                and body["OS-EXT-SRV-ATTR:host"] != before
            )

        polling.wait_until(moved, polling.boot_s(), "live-migrated", every=0.3)

        assert demo.get("/os-migrations").status_code == 403
        for version in ("2.1", "2.23", "2.59", "2.80"):
            with _api(cloud, "admin", version) as http:
                r = http.get("/os-migrations")
                assert r.status_code == 200, r.text
                assert_shape(f"migrations_list_v{version}", r.json())
                resize_record, live_record = sorted(r.json()["migrations"], key=lambda m: m["id"])
                assert (resize_record["instance_uuid"], resize_record["status"]) == (
                    sid,
                    "confirmed",
                )
                assert isinstance(resize_record["old_instance_type_id"], int)
                assert live_record["status"] == "completed"
                if version != "2.1":
                    assert live_record["migration_type"] == "live-migration"
        with _api(cloud, "admin", "2.59") as http:
            r = http.get("/os-migrations", params={"limit": 1})
            assert_shape("migrations_list_v2.59", r.json())
            assert r.json()["migrations_links"][0]["rel"] == "next"
            assert http.get("/os-migrations", params={"bogus": 1}).status_code == 400
            assert http.get("/os-migrations", params={"migration_type": "resize"}).json()[
                "migrations"
            ]
            assert (
                http.get("/os-migrations", params={"migration_type": "migration"}).json()[
                    "migrations"
                ]
                == []
            )
        with _api(cloud, "admin", "2.23") as http:
            assert http.get(f"/servers/{sid}/migrations").json() == {"migrations": []}
            assert http.get(f"/servers/{sid}/migrations/1").status_code == 404
            missing = "00000000-0000-0000-0000-000000000000"
            assert http.get(f"/servers/{missing}/migrations").status_code == 404
        with _api(cloud, "admin", "2.22") as http:
            assert http.get(f"/servers/{sid}/migrations").status_code == 404
