"""Server bodies per microversion and role, rendered from conductor Server messages
(the conductor's ServersService lands separately; these shapes are the gateway's)."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loom.common.v1 import common_pb2
from loom.conductor.v1 import servers_pb2
from starlette.applications import Starlette
from starlette.requests import Request

from controlplane.config import GatewayConfig
from gateway.microversion import Microversion
from gateway.views import servers as views
from tests.gateway.shapes import assert_shape


def _request() -> Request:
    app = Starlette()
    app.state.gateway = SimpleNamespace(cfg=GatewayConfig(public_url="http://loom.test"))
    return Request(
        {
            "type": "http",
            "app": app,
            "path": "/",
            "headers": [],
            "query_string": b"",
            "method": "GET",
        }
    )


def make_server(**overrides: object) -> servers_pb2.Server:
    created = Timestamp(seconds=1_700_000_000)
    server = servers_pb2.Server(
        id="6f1b9f5e-28a4-4bb8-9d8e-6d5c38ae8a11",
        name="vm-1",
        project_id="p1",
        user_id="u1",
        vm_state=servers_pb2.VM_STATE_ERROR,
        status=servers_pb2.SERVER_STATUS_ERROR,
        flavor=servers_pb2.FlavorSnapshot(
            id="1", name="m1.tiny", vcpus=1, memory_mb=512, root_gb=1
        ),
        image_id="9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55",
        host="sim-0001",
        node="sim-0001",
        availability_zone="nova",
        created_at=created,
        updated_at=created,
        fault=common_pb2.Fault(
            code=500, message="No valid host", details="capacity: 3 hosts", created_at=created
        ),
        addresses=[
            servers_pb2.ServerAddress(
                network="private",
                address="10.0.0.5",
                version=4,
                mac_address="fa:16:3e:00:00:01",
                type="fixed",
            )
        ],
        tags=["a"],
    )
    for key, value in overrides.items():
        setattr(server, key, value)
    return server


@pytest.mark.parametrize(
    ("version", "admin", "shape"),
    [
        ("2.1", False, "server_show_v2.1"),
        ("2.1", True, "server_show_admin_v2.1"),
        ("2.96", False, "server_show_v2.96"),
        ("2.96", True, "server_show_admin_v2.96"),
        ("2.100", False, "server_show_v2.100"),
        ("2.100", True, "server_show_admin_v2.100"),
    ],
)
def test_a_server_body_matches_the_published_shape(version: str, admin: bool, shape: str) -> None:
    body = views.detail(
        _request(), make_server(), Microversion.parse(version), is_admin=admin, host_status="UP"
    )
    assert_shape(shape, {"server": body})


@pytest.mark.parametrize(
    ("version", "shape"),
    [
        ("2.1", "server_rebuild_v2.1"),
        ("2.57", "server_rebuild_v2.57"),
        ("2.96", "server_rebuild_v2.96"),
    ],
)
def test_a_rebuild_body_has_the_shape_of_its_microversion(version: str, shape: str) -> None:
    server = make_server(
        status=servers_pb2.SERVER_STATUS_REBUILD,
        vm_state=servers_pb2.VM_STATE_ACTIVE,
        task_state=servers_pb2.TASK_STATE_REBUILDING,
        key_name="k1",
        user_data="aGk=",
    )
    body = views.rebuilt(
        _request(), server, Microversion.parse(version), is_admin=False, admin_pass="pw"
    )
    assert_shape(shape, {"server": body})
    assert body["status"] == "REBUILD"
    if version != "2.1":
        assert (body["key_name"], body["user_data"]) == ("k1", "aGk=")


def test_an_admin_s_rebuild_body_from_2_75_shows_user_data_once() -> None:
    server = make_server(user_data="aGk=", task_state=servers_pb2.TASK_STATE_REBUILD_SPAWNING)
    body = views.rebuilt(_request(), server, Microversion(2, 75), is_admin=True, admin_pass="x")
    assert body["user_data"] == "aGk="
    assert "OS-EXT-SRV-ATTR:user_data" not in body
    assert body["OS-EXT-STS:task_state"] == "rebuild_spawning"
    assert body["OS-EXT-SRV-ATTR:host"] == "sim-0001"


def test_the_host_id_hashes_project_and_host_so_projects_cannot_correlate() -> None:
    body = views.detail(_request(), make_server(), Microversion(2, 1), is_admin=False)
    assert body["hostId"] == hashlib.sha224(b"p1sim-0001").hexdigest()
    assert "OS-EXT-SRV-ATTR:host" not in body


def test_a_500_fault_hides_its_details_from_tenants_only() -> None:
    tenant = views.detail(_request(), make_server(), Microversion(2, 1), is_admin=False)
    admin = views.detail(_request(), make_server(), Microversion(2, 1), is_admin=True)
    assert "details" not in tenant["fault"]
    assert admin["fault"]["details"] == "capacity: 3 hosts"


def test_the_flavor_is_a_link_before_2_47_and_embedded_after() -> None:
    old = views.detail(_request(), make_server(), Microversion(2, 46), is_admin=False)
    new = views.detail(_request(), make_server(), Microversion(2, 47), is_admin=False)
    assert old["flavor"]["id"] == "1"
    assert new["flavor"]["original_name"] == "m1.tiny"
    assert "id" not in new["flavor"]


def test_an_active_server_has_no_fault_and_shows_its_status() -> None:
    server = make_server(
        vm_state=servers_pb2.VM_STATE_ACTIVE, status=servers_pb2.SERVER_STATUS_ACTIVE
    )
    body = views.detail(_request(), server, Microversion(2, 1), is_admin=False)
    assert body["status"] == "ACTIVE"
    assert "fault" not in body
    assert body["addresses"]["private"][0]["addr"] == "10.0.0.5"


def test_from_2_98_the_image_shows_the_standard_properties_the_server_kept() -> None:
    server = make_server()
    server.image_properties.update(
        {"hw_disk_bus": "virtio", "os_distro": "debian", "site_secret": "x"}
    )
    old = views.detail(_request(), server, Microversion(2, 97), is_admin=False)
    new = views.detail(_request(), server, Microversion(2, 98), is_admin=False)
    assert "properties" not in old["image"]
    assert new["image"]["properties"] == {"hw_disk_bus": "virtio", "os_distro": "debian"}


def test_from_2_100_the_scheduler_hints_show_the_group_the_server_was_created_in() -> None:
    grouped = make_server(server_group_id="0e5f2b1c-7d55-4c6c-9a53-6d1c1f3d2b10")
    old = views.detail(_request(), grouped, Microversion(2, 99), is_admin=False)
    new = views.detail(_request(), grouped, Microversion(2, 100), is_admin=False)
    alone = views.detail(_request(), make_server(), Microversion(2, 100), is_admin=False)
    assert "scheduler_hints" not in old
    assert new["scheduler_hints"] == {"group": ["0e5f2b1c-7d55-4c6c-9a53-6d1c1f3d2b10"]}
    assert alone["scheduler_hints"] == {}


def test_from_2_71_a_server_s_own_body_shows_its_groups_and_a_listed_one_does_not() -> None:
    server = make_server(server_group_id="0e5f2b1c-7d55-4c6c-9a53-6d1c1f3d2b10")
    shown = views.detail(_request(), server, Microversion(2, 71), is_admin=False)
    listed = views.detail(_request(), server, Microversion(2, 71), is_admin=False, listed=True)
    assert shown["server_groups"] == ["0e5f2b1c-7d55-4c6c-9a53-6d1c1f3d2b10"]
    assert "server_groups" not in listed


@pytest.mark.parametrize(
    ("status", "progress"),
    [
        (servers_pb2.SERVER_STATUS_BUILD, 0),
        (servers_pb2.SERVER_STATUS_ACTIVE, 100),
        (servers_pb2.SERVER_STATUS_VERIFY_RESIZE, 100),
        (servers_pb2.SERVER_STATUS_SHUTOFF, None),
        (servers_pb2.SERVER_STATUS_ERROR, None),
        (servers_pb2.SERVER_STATUS_PAUSED, None),
    ],
)
def test_only_a_server_building_active_or_moving_shows_progress(
    status: servers_pb2.ServerStatus.ValueType, progress: int | None
) -> None:
    body = views.detail(_request(), make_server(status=status), Microversion(2, 1), is_admin=False)
    assert body.get("progress") == progress
    assert ("progress" in body) is (progress is not None)
