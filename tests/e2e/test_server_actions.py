"""Pause, suspend, lock and shelve through unmodified OpenStack clients against a `loom up` stack
(simulated hosts on libvirt's test driver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import db_scalar
from tests.e2e.test_openstack_clients import _sdk, _wait_status, osc, ready_cloud
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow
__all__ = ["ready_cloud"]  # the fixture, used by name


def _boot(cloud: Stack, name: str) -> dict[str, Any]:
    server: dict[str, Any] = osc(
        cloud,
        "server",
        "create",
        "--flavor",
        "m1.tiny",
        "--image",
        "tiny",
        "--wait",
        name,
        "-f",
        "json",
    )
    assert server["status"] == "ACTIVE"
    return server


def test_the_openstack_cli_pauses_suspends_locks_and_an_admin_resets_a_server(
    ready_cloud: Stack,
) -> None:
    cloud = ready_cloud
    made = _boot(cloud, "vm1")

    osc(cloud, "server", "pause", "vm1")
    _wait_status(cloud, "vm1", "PAUSED")
    osc(cloud, "server", "unpause", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")
    osc(cloud, "server", "suspend", "vm1")
    _wait_status(cloud, "vm1", "SUSPENDED")
    osc(cloud, "server", "resume", "vm1")
    _wait_status(cloud, "vm1", "ACTIVE")

    osc(cloud, "--os-compute-api-version", "2.73", "server", "lock", "--reason", "audit", "vm1")
    shown = osc(cloud, "--os-compute-api-version", "2.73", "server", "show", "vm1", "-f", "json")
    assert (shown["locked"], shown["locked_reason"]) == (True, "audit")
    locked = osc(
        cloud, "--os-compute-api-version", "2.73", "server", "list", "--locked", "-f", "json"
    )
    assert [s["Name"] for s in locked] == ["vm1"]
    osc(cloud, "server", "unlock", "vm1")
    shown = osc(cloud, "--os-compute-api-version", "2.73", "server", "show", "vm1", "-f", "json")
    assert shown["locked"] is False

    actions = osc(cloud, "server", "event", "list", "vm1", "-f", "json")
    names = [a.get("Action", a.get("action")) for a in actions]
    for verb in ("pause", "unpause", "suspend", "resume", "lock", "unlock"):
        assert verb in names

    with _sdk(cloud, "loom") as conn:
        refused = conn.compute.post(
            f"/servers/{made['id']}/action", json={"os-resetState": {"state": "error"}}
        )
        assert refused.status_code == 403, refused.text
        # Wiring a server's ports again is an operator's act too.
        inject = {"injectNetworkInfo": None}
        refused = conn.compute.post(f"/servers/{made['id']}/action", json=inject)
        assert refused.status_code == 403, refused.text
    with _sdk(cloud, "loom-admin") as admin:
        injected = admin.compute.post(f"/servers/{made['id']}/action", json=inject)
        assert injected.status_code == 202, injected.text
        bad = admin.compute.post(
            f"/servers/{made['id']}/action", json={"injectNetworkInfo": {"now": True}}
        )
        assert bad.status_code == 400, bad.text
    osc(cloud, "server", "set", "--auto-approve", "--state", "error", made["id"], admin=True)
    _wait_status(cloud, "vm1", "ERROR")
    osc(cloud, "server", "set", "--auto-approve", "--state", "active", made["id"], admin=True)
    _wait_status(cloud, "vm1", "ACTIVE")
    osc(cloud, "server", "delete", "--wait", "vm1")


def test_the_rest_api_refuses_what_the_state_or_the_lock_forbids(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    with _sdk(cloud, "loom") as conn, _sdk(cloud, "loom-admin") as admin:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("z1", image=image.id, flavor=flavor.id, auto_ip=False)
        server = conn.compute.wait_for_server(server, wait=60)
        sid = server.id
        h = {"OpenStack-API-Version": "compute 2.96"}

        def act(c: Any, body: dict[str, Any], version: str = "2.96") -> Any:
            return c.compute.post(
                f"/servers/{sid}/action",
                json=body,
                headers={"OpenStack-API-Version": f"compute {version}"},
            )

        r = act(conn, {"unpause": None})
        assert r.status_code == 409, r.text
        assert r.json() == {
            "conflictingRequest": {
                "code": 409,
                "message": f"Cannot 'unpause' instance {sid} while it is in vm_state active",
            }
        }
        r = act(conn, {"pause": None})
        assert r.status_code == 202, r.text
        conn.compute.wait_for_server(server, status="PAUSED", wait=60)
        shown = conn.compute.get(f"/servers/{sid}", headers=h).json()["server"]
        assert shown["OS-EXT-STS:vm_state"] == "paused"
        assert shown["OS-EXT-STS:power_state"] == 3

        # A reason needs 2.73; before it the lock takes no arguments.
        r = act(conn, {"lock": {"locked_reason": "x"}}, "2.72")
        assert r.status_code == 400, r.text
        r = act(conn, {"lock": {"locked_reason": "y" * 256}}, "2.73")
        assert r.status_code == 400, r.text

        # An admin's lock on a tenant's server: the tenant can neither act nor unlock.
        r = act(admin, {"lock": {"locked_reason": "held by ops"}}, "2.73")
        assert r.status_code == 202, r.text
        r = act(conn, {"unpause": None})
        assert r.status_code == 409, r.text
        assert r.json()["conflictingRequest"]["message"] == f"Instance {sid} is locked"
        r = conn.compute.delete(f"/servers/{sid}", headers=h)
        assert r.status_code == 409, r.text
        r = act(conn, {"unlock": None})
        assert r.status_code == 403, r.text
        shown = conn.compute.get(f"/servers/{sid}", headers=h).json()["server"]
        assert (shown["locked"], shown["locked_reason"]) == (True, "held by ops")
        # Before 2.73 the reason is not shown; before 2.9 not even the lock.
        old = conn.compute.get(
            f"/servers/{sid}", headers={"OpenStack-API-Version": "compute 2.72"}
        ).json()["server"]
        assert old["locked"] is True
        assert "locked_reason" not in old
        older = conn.compute.get(
            f"/servers/{sid}", headers={"OpenStack-API-Version": "compute 2.8"}
        ).json()["server"]
        assert "locked" not in older
        # The admin is not held by the lock, and lifts it.
        r = act(admin, {"unpause": None})
        assert r.status_code == 202, r.text
        _settle(conn, sid)
        r = act(admin, {"unlock": None})
        assert r.status_code == 202, r.text

        # An owner's lock the owner lifts again.
        assert act(conn, {"lock": None}).status_code == 202
        assert act(conn, {"suspend": None}).status_code == 409
        assert act(conn, {"unlock": None}).status_code == 202
        assert act(conn, {"suspend": None}).status_code == 202
        conn.compute.wait_for_server(server, status="SUSPENDED", wait=60)
        assert act(conn, {"pause": None}).status_code == 409
        assert act(conn, {"resume": None}).status_code == 202
        _settle(conn, sid)
        conn.delete_server(sid, wait=True)


def _allocations(cloud: Stack, server_id: str) -> int:
    return int(
        db_scalar(
            cloud.db_url, f"SELECT count(*) FROM allocations WHERE consumer_id = '{server_id}'"
        )
    )


def test_the_openstack_cli_shelves_offloads_and_unshelves_a_server(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    server = _boot(cloud, "vm2")
    sid = server["id"]
    assert _allocations(cloud, sid) == 1

    # loom up offloads at once (shelved_offload_time 0): the host and its claim are freed.
    osc(cloud, "server", "shelve", "vm2")
    _wait_status(cloud, "vm2", "SHELVED_OFFLOADED")
    shown = osc(cloud, "server", "show", "vm2", "-f", "json", admin=False)
    assert shown["OS-EXT-STS:vm_state"] == "shelved_offloaded"
    assert _allocations(cloud, sid) == 0
    admin_view = osc(cloud, "server", "show", sid, "-f", "json", admin=True)
    assert not admin_view.get("OS-EXT-SRV-ATTR:host")

    osc(cloud, "server", "unshelve", "vm2")
    _wait_status(cloud, "vm2", "ACTIVE")
    assert _allocations(cloud, sid) == 1
    names = [
        a.get("Action", a.get("action"))
        for a in osc(cloud, "server", "event", "list", "vm2", "-f", "json")
    ]
    assert names[:2] == ["unshelve", "shelve"]
    osc(cloud, "server", "delete", "--wait", "vm2")


def test_the_rest_api_shapes_shelve_and_unshelve_requests_by_microversion(
    ready_cloud: Stack,
) -> None:
    with _sdk(ready_cloud, "loom") as conn, _sdk(ready_cloud, "loom-admin") as admin:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("z2", image=image.id, flavor=flavor.id, auto_ip=False)
        server = conn.compute.wait_for_server(server, wait=60)
        sid = server.id

        def act(c: Any, body: dict[str, Any], version: str = "2.96") -> Any:
            return c.compute.post(
                f"/servers/{sid}/action",
                json=body,
                headers={"OpenStack-API-Version": f"compute {version}"},
            )

        r = act(conn, {"unshelve": None})
        assert r.status_code == 409, r.text
        # Offloading is for admins.
        assert act(conn, {"shelveOffload": None}).status_code == 403
        assert act(conn, {"shelve": None}).status_code == 202
        conn.compute.wait_for_server(server, status="SHELVED_OFFLOADED", wait=60)
        # A zone needs 2.77, a host (admins only) or a null zone 2.91.
        assert act(conn, {"unshelve": {"availability_zone": "nova"}}, "2.76").status_code == 400
        assert act(conn, {"unshelve": {"availability_zone": None}}, "2.90").status_code == 400
        assert act(conn, {"unshelve": {"host": "cloud-0001"}}, "2.90").status_code == 400
        assert act(conn, {"unshelve": {"host": "cloud-0001"}}, "2.91").status_code == 403
        r = act(conn, {"unshelve": {"availability_zone": "atlantis"}}, "2.77")
        assert r.status_code == 400, r.text
        assert "availability zone is not available" in r.text
        r = act(admin, {"unshelve": {"host": "cloud-0002"}}, "2.91")
        assert r.status_code == 202, r.text
        _settle(conn, sid)
        shown = admin.compute.get(
            f"/servers/{sid}", headers={"OpenStack-API-Version": "compute 2.96"}
        ).json()["server"]
        assert shown["OS-EXT-SRV-ATTR:host"] == "cloud-0002"
        conn.delete_server(sid, wait=True)


def test_the_openstack_cli_rebuilds_a_server_from_another_image(
    ready_cloud: Stack, tmp_path: Path
) -> None:
    cloud = ready_cloud
    image = tmp_path / "other.raw"
    image.write_bytes(b"\1" * 65536)
    other = osc(
        cloud,
        "image",
        "create",
        "--file",
        str(image),
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--public",
        "other",
        "-f",
        "json",
        admin=True,
    )
    _boot(cloud, "vm3")
    osc(cloud, "server", "rebuild", "--image", "other", "--wait", "vm3")
    shown = osc(cloud, "server", "show", "vm3", "-f", "json")
    assert shown["status"] == "ACTIVE"
    image_field = shown["image"]
    assert other["id"] in (image_field if isinstance(image_field, str) else str(image_field))
    names = [
        a.get("Action", a.get("action"))
        for a in osc(cloud, "server", "event", "list", "vm3", "-f", "json")
    ]
    assert names[0] == "rebuild"
    osc(cloud, "server", "delete", "--wait", "vm3")


def _settle(conn: Any, sid: str) -> None:
    """Waits until the server is ACTIVE with no task (read afresh each time)."""

    def settled() -> bool:
        s = conn.compute.get(
            f"/servers/{sid}", headers={"OpenStack-API-Version": "compute 2.96"}
        ).json()["server"]
        return bool(s["status"] == "ACTIVE" and s["OS-EXT-STS:task_state"] is None)

    polling.wait_until(settled, 60, f"{sid} settled", every=0.3)


def test_the_rebuild_response_has_the_shape_of_its_microversion(ready_cloud: Stack) -> None:
    with _sdk(ready_cloud, "loom") as conn:
        image = conn.image.find_image("tiny", ignore_missing=False)
        flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
        server = conn.create_server("z3", image=image.id, flavor=flavor.id, auto_ip=False)
        server = conn.compute.wait_for_server(server, wait=60)
        sid = server.id

        def rebuild(body: dict[str, Any], version: str) -> Any:
            return conn.compute.post(
                f"/servers/{sid}/action",
                json={"rebuild": {"imageRef": image.id, **body}},
                headers={"OpenStack-API-Version": f"compute {version}"},
            )

        # Fields of later microversions, and what Loom cannot do, are refused.
        assert rebuild({"key_name": None}, "2.53").status_code == 400
        assert rebuild({"user_data": "aGk="}, "2.56").status_code == 400
        assert (
            rebuild({"personality": [{"path": "/a", "contents": "eA=="}]}, "2.1").status_code == 400
        )
        r = rebuild({"preserve_ephemeral": True}, "2.96")
        assert r.status_code == 400, r.text
        assert "ephemeral" in r.text
        r = rebuild({"name": "z3b", "metadata": {"a": "b"}}, "2.47")
        assert r.status_code == 202, r.text
        body = r.json()["server"]
        assert body["name"] == "z3b"
        assert body["metadata"] == {"a": "b"}
        assert body["status"] == "REBUILD"
        assert "adminPass" in body
        assert isinstance(body["flavor"], dict)
        assert "original_name" in body["flavor"]
        assert not [k for k in body if k.startswith(("OS-EXT-", "OS-SRV-USG"))]
        assert "key_name" not in body
        assert "user_data" not in body
        _settle(conn, sid)
        r = rebuild({"user_data": "aGk=", "key_name": None}, "2.57")
        assert r.status_code == 202, r.text
        body = r.json()["server"]
        assert (body["user_data"], body["key_name"]) == ("aGk=", None)
        assert not [k for k in body if k.startswith("OS-EXT-")]
        _settle(conn, sid)
        r = rebuild({"description": "d"}, "2.75")
        assert r.status_code == 202, r.text
        body = r.json()["server"]
        assert body["OS-EXT-STS:task_state"] in ("rebuilding", "rebuild_spawning", None)
        assert "OS-EXT-SRV-ATTR:user_data" not in body
        assert body["user_data"] == "aGk="
        assert body["description"] == "d"
        _settle(conn, sid)
        conn.delete_server(sid, wait=True)
