"""The unmodified openstack CLI evacuates servers of a host forced down, and the evacuate
action answers as Nova's does per microversion (three simulated hosts on test:///)."""

from __future__ import annotations

import pytest

from tests.e2e.test_moves_cli import _api, _wait_api_status
from tests.e2e.test_openstack_clients import osc, ready_cloud
from tests.support import polling
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

__all__ = ["ready_cloud"]  # the fixture, shared with the other client tests


def _boot(cloud: Stack, name: str) -> str:
    created = osc(
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
    return str(created["id"])


def _set_compute(cloud: Stack, host: str, state: str) -> None:
    osc(cloud, "compute", "service", "set", state, host, "nova-compute", admin=True)


# Three simulated hosts and a dozen CLI runs take minutes on a busy machine.
@pytest.mark.timeout(600)
def test_the_openstack_cli_evacuates_servers_of_a_host_forced_down(ready_cloud: Stack) -> None:
    cloud = ready_cloud
    vm1 = _boot(cloud, "vm1")
    vm2 = _boot(cloud, "vm2")
    action = f"/servers/{vm1}/action"
    with (
        _api(cloud, "admin", "2.96") as admin,
        _api(cloud, "demo", "2.96") as demo,
        _api(cloud, "admin", "2.13") as v213,
        _api(cloud, "admin", "2.29") as v229,
        _api(cloud, "admin", "2.68") as v268,
    ):

        def host_of(sid: str) -> str:
            return str(admin.get(f"/servers/{sid}").json()["server"]["OS-EXT-SRV-ATTR:host"])

        source, source2 = host_of(vm1), host_of(vm2)
        # Refused while the source host is up (Nova's words), and to a tenant.
        r = admin.post(action, json={"evacuate": {}})
        assert r.status_code == 400, r.text
        assert r.json()["badRequest"]["message"] == f"Compute service of {source} is still in use."
        assert demo.post(action, json={"evacuate": {}}).status_code == 403

        for host in {source, source2}:
            _set_compute(cloud, host, "--down")
        # Before 2.14 onSharedStorage is required, and Loom has no shared storage.
        assert v213.post(action, json={"evacuate": {}}).status_code == 400
        assert v213.post(action, json={"evacuate": {"onSharedStorage": True}}).status_code == 400
        # force is 2.29 to 2.67 only, and needs a host.
        assert v268.post(action, json={"evacuate": {"force": True}}).status_code == 400
        assert v229.post(action, json={"evacuate": {"force": True}}).status_code == 400
        r = v229.post(action, json={"evacuate": {"host": "nowhere"}})
        assert r.status_code == 404, r.text
        assert admin.get(f"/servers/{vm1}").json()["server"]["status"] == "ACTIVE"

        # The CLI at its newest microversion (2.95+): the server rests stopped elsewhere.
        osc(cloud, "server", "evacuate", vm1, admin=True)
        _wait_api_status(admin, vm1, "SHUTOFF")
        assert host_of(vm1) not in (source, source2)

        # At 2.13 the answer carries adminPass; the server keeps its state (ACTIVE).
        r = v213.post(f"/servers/{vm2}/action", json={"evacuate": {"onSharedStorage": False}})
        assert r.status_code == 200, r.text
        assert isinstance(r.json()["adminPass"], str)
        _wait_api_status(admin, vm2, "ACTIVE")
        assert host_of(vm2) not in (source, source2)

        def both_completed() -> bool:
            found = admin.get("/os-migrations", params={"migration_type": "evacuation"}).json()
            return sorted(m["status"] for m in found["migrations"]) == ["completed", "completed"]

        # The simulated sources never stopped: each takes its move_drop at once.
        polling.wait_until(both_completed, polling.boot_s(), "evacuations completed", every=0.5)
    listed = osc(cloud, "server", "migration", "list", "-f", "json", admin=True)
    assert {m["Type"] for m in listed} == {"evacuation"}
