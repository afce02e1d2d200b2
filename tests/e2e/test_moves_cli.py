"""The unmodified openstack CLI resizes, confirms, reverts, migrates and lists migrations
against a running stack (three simulated hosts on test:///)."""

from __future__ import annotations

import pytest

from tests.e2e.test_openstack_clients import _wait_status, osc, ready_cloud
from tests.support.stack import Stack

pytestmark = pytest.mark.slow

__all__ = ["ready_cloud"]  # the fixture, shared with the other client tests


def _show(cloud: Stack, name: str) -> dict[str, str]:
    shown: dict[str, str] = osc(cloud, "server", "show", name, "-f", "json", admin=True)
    return shown


def test_the_openstack_cli_resizes_confirms_reverts_and_migrates_a_server(
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

    listed = osc(cloud, "server", "migration", "list", "-f", "json", admin=True)
    assert [(m["Type"], m["Status"]) for m in listed] == [
        ("migration", "confirmed"),
        ("resize", "reverted"),
        ("resize", "confirmed"),
    ]
    only_resizes = osc(
        cloud, "server", "migration", "list", "--type", "resize", "-f", "json", admin=True
    )
    assert len(only_resizes) == 2
