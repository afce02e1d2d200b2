"""createImage through the whole stack: the gateway registers the snapshot image, the
conductor has the host copy the disk, the agent uploads it through the Image API with the
service token, and the image holds the server's disk."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.client import resolve_cloud
from tests.e2e.support import wait_for_hosts
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

# A raw disk with a marker a reader can find in the snapshot.
MARKER = b"loom-snapshot-marker"
DISK = MARKER + b"\0" * (1024 * 1024 - len(MARKER))


def _raw_of(qcow2: bytes, tmp: Path) -> bytes:
    src, dst = tmp / "snap.qcow2", tmp / "snap.raw"
    src.write_bytes(qcow2)
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(dst)], check=True
    )
    return dst.read_bytes()


@pytest.fixture
async def ready(cloud: Stack) -> Stack:
    await wait_for_hosts(cloud, 3)
    return cloud


def _wait(http: httpx.Client, url: str, key: str, field: str, want: object) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal seen
        got = http.get(url).json()
        seen = got[key] if key else got
        return bool(seen.get(field) == want)

    polling.wait_until(reached, polling.boot_s(), f"{url} {field} {want}", every=0.3)
    return seen


def _marked_image(http: httpx.Client, base: str) -> dict[str, Any]:
    """An active raw image of DISK, with an os_distro a snapshot inherits."""
    image: dict[str, Any] = http.post(
        f"{base}/image/v2/images",
        json={
            "name": "marked",
            "disk_format": "raw",
            "container_format": "bare",
            "os_distro": "loomos",
        },
    ).json()
    r = http.put(
        f"{base}/image/v2/images/{image['id']}/file",
        content=DISK,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text
    return image


@pytest.mark.timeout(600)
def test_a_snapshot_becomes_an_image_holding_the_server_s_disk(
    ready: Stack, tmp_path: Path
) -> None:
    cloud = ready
    tenant = resolve_cloud("loom", cloud.data_dir / "clouds.yaml")
    base = tenant.compute_url.split("/compute")[0]
    c = tenant.compute_url
    h = {"X-Auth-Token": tenant.token}
    with httpx.Client(headers=h, timeout=60) as http:
        image = _marked_image(http, base)
        server = http.post(
            f"{c}/servers",
            json={
                "server": {
                    "name": "snapped",
                    "imageRef": image["id"],
                    "flavorRef": "1",
                    "networks": "none",
                }
            },
            headers={"OpenStack-API-Version": "compute 2.45"},
        )
        assert server.status_code == 202, server.text
        sid = server.json()["server"]["id"]
        _wait(http, f"{c}/servers/{sid}", "server", "status", "ACTIVE")

        action = f"{c}/servers/{sid}/action"
        r = http.post(
            action,
            json={"createImage": {"name": "snap-1", "metadata": {"purpose": "backup"}}},
            headers={"OpenStack-API-Version": "compute 2.45"},
        )
        assert r.status_code == 202, r.text
        snap_id = r.json()["image_id"]
        snap = _wait(http, f"{base}/image/v2/images/{snap_id}", "", "status", "active")
        assert (snap["name"], snap["visibility"], snap["disk_format"]) == (
            "snap-1",
            "private",
            "qcow2",
        )
        assert (snap["image_type"], snap["instance_uuid"], snap["base_image_ref"]) == (
            "snapshot",
            sid,
            image["id"],
        )
        assert (snap["purpose"], snap["os_distro"]) == ("backup", "loomos")
        after = _wait(http, f"{c}/servers/{sid}", "server", "status", "ACTIVE")
        assert after["OS-EXT-STS:task_state"] is None
        actions = http.get(f"{c}/servers/{sid}/os-instance-actions").json()["instanceActions"]
        assert "createImage" in {a["action"] for a in actions}

        # The snapshot's bytes are the server's disk (a simulated guest's disk is its image).
        data = http.get(f"{base}/image/v2/images/{snap_id}/file").content
        assert _raw_of(data, tmp_path)[: len(DISK)] == DISK

        # Before 2.45 the answer is the image's URL; a stopped server can be snapshot too.
        r = http.post(action, json={"os-stop": None})
        assert r.status_code == 202, r.text
        _wait(http, f"{c}/servers/{sid}", "server", "status", "SHUTOFF")
        r = http.post(action, json={"createImage": {"name": "snap-2"}})
        assert r.status_code == 202, r.text
        assert "/images/" in r.headers["Location"]
        second = r.headers["Location"].rsplit("/", 1)[-1]
        _wait(http, f"{base}/image/v2/images/{second}", "", "status", "active")
        _wait(http, f"{c}/servers/{sid}", "server", "OS-EXT-STS:task_state", None)

        # A server that cannot be snapshot leaves no image behind.
        r = http.post(action, json={"shelve": None})
        assert r.status_code == 202, r.text
        _wait(http, f"{c}/servers/{sid}", "server", "status", "SHELVED_OFFLOADED")
        before = {i["id"] for i in http.get(f"{base}/image/v2/images").json()["images"]}
        r = http.post(action, json={"createImage": {"name": "snap-3"}})
        assert r.status_code == 409, r.text
        after_ids = {i["id"] for i in http.get(f"{base}/image/v2/images").json()["images"]}
        assert after_ids == before

        # The shelve took a snapshot: the offloaded server comes back from it, and then it
        # goes; deleting a shelved server takes its snapshot with it.
        def shelved_images() -> list[dict[str, Any]]:
            images = http.get(f"{base}/image/v2/images").json()["images"]
            return [i for i in images if i["name"] == "snapped-shelved"]

        [shelved] = shelved_images()
        assert (shelved["status"], shelved["instance_uuid"]) == ("active", sid)
        assert (
            _raw_of(http.get(f"{base}/image/v2/images/{shelved['id']}/file").content, tmp_path)[
                : len(DISK)
            ]
            == DISK
        )
        r = http.post(action, json={"unshelve": None})
        assert r.status_code == 202, r.text
        _wait(http, f"{c}/servers/{sid}", "server", "status", "ACTIVE")
        polling.wait_until(lambda: shelved_images() == [], 30, "the shelve's snapshot deleted")
        r = http.post(action, json={"shelve": None})
        assert r.status_code == 202, r.text
        _wait(http, f"{c}/servers/{sid}", "server", "status", "SHELVED_OFFLOADED")
        assert len(shelved_images()) == 1
        assert http.delete(f"{c}/servers/{sid}").status_code == 204
        assert shelved_images() == []
        # Bad bodies are 400s.
        for bad in ({}, {"name": ""}, {"name": "x", "color": "red"}, {"name": "x", "metadata": 1}):
            r = http.post(action, json={"createImage": bad})
            assert r.status_code == 400, (bad, r.text)


@pytest.mark.timeout(600)
def test_backups_keep_the_newest_of_their_type_and_a_rotation_of_zero_keeps_none(
    ready: Stack,
) -> None:
    cloud = ready
    tenant = resolve_cloud("loom", cloud.data_dir / "clouds.yaml")
    base = tenant.compute_url.split("/compute")[0]
    c = tenant.compute_url
    v245 = {"OpenStack-API-Version": "compute 2.45"}
    with httpx.Client(headers={"X-Auth-Token": tenant.token}, timeout=60) as http:
        image_id = _marked_image(http, base)["id"]
        server = http.post(
            f"{c}/servers",
            json={
                "server": {
                    "name": "backed",
                    "imageRef": image_id,
                    "flavorRef": "1",
                    "networks": "none",
                }
            },
            headers=v245,
        )
        assert server.status_code == 202, server.text
        sid = server.json()["server"]["id"]
        _wait(http, f"{c}/servers/{sid}", "server", "status", "ACTIVE")
        action = f"{c}/servers/{sid}/action"

        def backup(name: str, backup_type: str, rotation: object) -> str:
            r = http.post(
                action,
                json={
                    "createBackup": {
                        "name": name,
                        "backup_type": backup_type,
                        "rotation": rotation,
                    }
                },
                headers=v245,
            )
            assert r.status_code == 202, r.text
            backup_id = str(r.json()["image_id"])
            _wait(http, f"{c}/servers/{sid}", "server", "OS-EXT-STS:task_state", None)
            return backup_id

        def backups(backup_type: str) -> list[str]:
            query = (
                f"image_type=backup&backup_type={backup_type}&instance_uuid={sid}"
                "&sort_key=created_at&sort_dir=asc"
            )
            images = http.get(f"{base}/image/v2/images?{query}").json()["images"]
            return [str(i["name"]) for i in images]

        weekly = backup("weekly-1", "weekly", 1)
        shown = http.get(f"{base}/image/v2/images/{weekly}").json()
        assert (shown["status"], shown["image_type"], shown["backup_type"]) == (
            "active",
            "backup",
            "weekly",
        )
        backup("daily-1", "daily", 2)
        backup("daily-2", "daily", "2")  # the rotation may be given as digits
        assert backups("daily") == ["daily-1", "daily-2"]
        backup("daily-3", "daily", 2)
        assert backups("daily") == ["daily-2", "daily-3"]  # the oldest went
        assert backups("weekly") == ["weekly-1"]  # another type is left alone
        actions = http.get(f"{c}/servers/{sid}/os-instance-actions").json()["instanceActions"]
        assert [a["action"] for a in actions].count("createBackup") == 4

        # Before 2.45 a rotation of 0 has no Location: that backup goes with the others.
        r = http.post(
            action, json={"createBackup": {"name": "gone", "backup_type": "daily", "rotation": 0}}
        )
        assert r.status_code == 202, r.text
        assert "Location" not in r.headers
        _wait(http, f"{c}/servers/{sid}", "server", "OS-EXT-STS:task_state", None)
        assert backups("daily") == []
        assert backups("weekly") == ["weekly-1"]

        for bad in (
            {"name": "x", "backup_type": "daily"},
            {"name": "x", "backup_type": "daily", "rotation": -1},
            {"name": "x", "backup_type": "daily", "rotation": "two"},
            {"name": "x", "backup_type": 7, "rotation": 1},
            {"name": "x", "backup_type": "daily", "rotation": 1, "color": "red"},
        ):
            r = http.post(action, json={"createBackup": bad})
            assert r.status_code == 400, (bad, r.text)
