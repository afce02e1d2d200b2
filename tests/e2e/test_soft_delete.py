"""Soft delete (reclaim_instance_interval > 0) through the REST API on simulated hosts:
a delete powers the server off and keeps it SOFT_DELETED (still counted in the quota),
restore brings it back, forceDelete deletes it now, and the conductor reclaims it after
the interval."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.client import resolve_cloud
from tests.e2e.support import boot_one_through_api
from tests.support import polling
from tests.support.nats import RestartableNats
from tests.support.stack import Stack

RECLAIM_S = 12


@pytest.fixture
def soft_cloud(pg_url: str, nats: RestartableNats, tmp_path: Path) -> Iterator[Stack]:
    s = Stack(
        db_url=pg_url,
        nats_url=nats.url,
        data_dir=tmp_path / "loom",
        extra_env={
            "LOOM_AGENT__HEARTBEAT_INTERVAL": "1",
            "LOOM_CONDUCTOR__RECLAIM_INSTANCE_INTERVAL": str(RECLAIM_S),
        },
    )
    try:
        s.start("scheduler")
        s.start("conductor")
        s.start("agent", "--simulate", "1", "--host-prefix", "soft")
        s.start("gateway")
        yield s
    finally:
        s.stop_all()


def _wait_status(api: httpx.Client, sid: str, status: str, within: float) -> dict[str, object]:
    def reached() -> dict[str, object] | None:
        server: dict[str, object] = api.get(f"/servers/{sid}").json()["server"]
        return server if server["status"] == status else None

    return polling.wait_until(reached, within, f"server {sid} {status}", every=0.2)


def test_delete_is_soft_restore_brings_back_force_delete_and_reclaim_delete(
    soft_cloud: Stack,
) -> None:
    sid = boot_one_through_api(soft_cloud, "soft")
    tenant = resolve_cloud("loom", soft_cloud.data_dir / "clouds.yaml")
    headers = {"X-Auth-Token": tenant.token, "OpenStack-API-Version": "compute 2.37"}
    with httpx.Client(base_url=tenant.compute_url, headers=headers, timeout=30) as api:
        assert api.delete(f"/servers/{sid}").status_code == 204
        server = _wait_status(api, sid, "SOFT_DELETED", 15)
        assert server["OS-EXT-STS:vm_state"] == "soft-delete"
        assert server["OS-EXT-STS:power_state"] == 4
        used = api.get("/limits").json()["limits"]["absolute"]["totalInstancesUsed"]
        assert used == 1, "a soft-deleted server still counts against the quota"
        assert api.delete(f"/servers/{sid}").status_code == 204, "deleting again is a no-op"

        assert api.post(f"/servers/{sid}/action", json={"restore": None}).status_code == 202
        server = _wait_status(api, sid, "ACTIVE", 15)
        assert server["OS-EXT-STS:power_state"] == 1
        r = api.post(f"/servers/{sid}/action", json={"restore": None})
        assert r.status_code == 409, r.text
        actions = [
            a["action"]
            for a in api.get(f"/servers/{sid}/os-instance-actions").json()["instanceActions"]
        ]
        assert {"delete", "restore"} <= set(actions)

        assert api.delete(f"/servers/{sid}").status_code == 204
        _wait_status(api, sid, "SOFT_DELETED", 15)
        assert api.post(f"/servers/{sid}/action", json={"forceDelete": None}).status_code == 202
        polling.wait_until(
            lambda: api.get(f"/servers/{sid}").status_code == 404, 15, "force-deleted"
        )

    other = boot_one_through_api(soft_cloud, "reclaimed")
    with httpx.Client(base_url=tenant.compute_url, headers=headers, timeout=30) as api:
        assert api.delete(f"/servers/{other}").status_code == 204
        _wait_status(api, other, "SOFT_DELETED", 15)
        polling.wait_until(
            lambda: api.get(f"/servers/{other}").status_code == 404,
            RECLAIM_S + 20,
            "reclaimed after the interval",
        )
        used = api.get("/limits").json()["limits"]["absolute"]["totalInstancesUsed"]
        assert used == 0
