"""Version documents, microversion negotiation, request ids, auth and error shapes."""

from __future__ import annotations

import base64

import pytest

from tests.gateway.conftest import Cloud
from tests.gateway.shapes import assert_shape


async def test_the_compute_root_lists_v2_0_deprecated_and_v2_1_current(cloud: Cloud) -> None:
    r = await cloud.client.get("/compute/")
    assert r.status_code == 200
    assert_shape("compute_versions", r.json())
    status = {v["id"]: v["status"] for v in r.json()["versions"]}
    assert status == {"v2.0": "DEPRECATED", "v2.1": "CURRENT"}


async def test_the_v2_1_document_advertises_2_1_to_2_100_without_a_token(cloud: Cloud) -> None:
    r = await cloud.client.get("/compute/v2.1")
    assert r.status_code == 200
    assert_shape("compute_version_v2.1", r.json())
    assert (r.json()["version"]["min_version"], r.json()["version"]["version"]) == ("2.1", "2.100")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "2.1"),
        ({"OpenStack-API-Version": "compute 2.60"}, "2.60"),
        ({"X-OpenStack-Nova-API-Version": "2.35"}, "2.35"),
        ({"OpenStack-API-Version": "compute latest"}, "2.100"),
        ({"OpenStack-API-Version": "image 2.5, compute 2.10"}, "2.10"),
    ],
    ids=["no header", "modern header", "legacy header", "latest", "several services"],
)
async def test_the_negotiated_version_is_echoed_in_both_headers(
    cloud: Cloud, headers: dict[str, str], expected: str
) -> None:
    r = await cloud.client.get(
        "/compute/v2.1/flavors", headers={**await cloud.headers(), **headers}
    )
    assert r.status_code == 200
    assert r.headers["openstack-api-version"] == f"compute {expected}"
    assert r.headers["x-openstack-nova-api-version"] == expected
    assert "OpenStack-API-Version" in r.headers["vary"]


@pytest.mark.parametrize("version", ["2.0", "2.101", "3.1"])
async def test_a_version_out_of_range_is_406(cloud: Cloud, version: str) -> None:
    r = await cloud.client.get(
        "/compute/v2.1/flavors", headers={"OpenStack-API-Version": f"compute {version}"}
    )
    assert r.status_code == 406
    assert_shape("nova_error", r.json())
    assert "2.100" in r.json()["computeFault"]["message"]


async def test_a_malformed_version_is_400(cloud: Cloud) -> None:
    r = await cloud.client.get(
        "/compute/v2.1/flavors", headers={"OpenStack-API-Version": "compute two"}
    )
    assert r.status_code == 400
    assert r.json()["badRequest"]["code"] == 400


@pytest.mark.parametrize(
    "path",
    ["/compute/v2.1/flavors", "/compute/v2.1/os-keypairs", "/compute/v2.1/servers/detail"],
)
async def test_compute_endpoints_need_a_token(cloud: Cloud, path: str) -> None:
    r = await cloud.client.get(path)
    assert r.status_code == 401
    assert r.json()["unauthorized"]["code"] == 401


async def test_a_forged_token_is_401(cloud: Cloud) -> None:
    raw = bytearray(base64.urlsafe_b64decode(await cloud.token()))
    raw[-1] ^= 0x01  # the last byte of its HMAC
    forged = base64.urlsafe_b64encode(bytes(raw)).decode()
    r = await cloud.client.get("/compute/v2.1/flavors", headers={"X-Auth-Token": forged})
    assert r.status_code == 401


@pytest.mark.parametrize(
    "path", ["/compute/v2.1/flavors", "/compute/v2.1/no-such-thing", "/identity/v3/nope"]
)
async def test_every_response_carries_a_request_id(cloud: Cloud, path: str) -> None:
    r = await cloud.client.get(path, headers=await cloud.headers())
    rid = r.headers["x-openstack-request-id"]
    assert rid.startswith("req-")
    assert len(rid) == 40
    if path.startswith("/compute"):
        assert r.headers["x-compute-request-id"] == rid


async def test_request_ids_differ_per_request(cloud: Cloud) -> None:
    first = await cloud.client.get("/compute/")
    second = await cloud.client.get("/compute/")
    assert first.headers["x-openstack-request-id"] != second.headers["x-openstack-request-id"]


async def test_a_missing_flavor_is_an_item_not_found_body(cloud: Cloud) -> None:
    r = await cloud.client.get("/compute/v2.1/flavors/nope", headers=await cloud.headers())
    assert r.status_code == 404
    assert_shape("nova_error", r.json())
    assert r.json()["itemNotFound"]["message"] == "Flavor nope could not be found."


async def test_the_project_id_may_lead_the_path_as_legacy_clients_send_it(cloud: Cloud) -> None:
    h = await cloud.headers()
    me = (
        await cloud.client.get(
            "/identity/v3/auth/tokens", headers={**h, "X-Subject-Token": h["X-Auth-Token"]}
        )
    ).json()
    project_id = me["token"]["project"]["id"]
    r = await cloud.client.get(f"/compute/v2.1/{project_id}/flavors", headers=h)
    assert r.status_code == 200
    assert len(r.json()["flavors"]) == 5
    other = await cloud.client.get(
        "/compute/v2.1/0123456789abcdef0123456789abcdef/flavors", headers=h
    )
    assert other.status_code == 400
    unknown = await cloud.client.get("/compute/v2.1/os-cells", headers=h)
    assert unknown.status_code == 404


async def test_servers_validate_before_calling_the_conductor(cloud: Cloud) -> None:
    """The conductor's ServersService lands later; bad input must still be a 400 now,
    and good input a clean error, never a 500."""
    h = await cloud.headers(version="2.96")
    bad = await cloud.client.post(
        "/compute/v2.1/servers", json={"server": {"name": "x"}}, headers=h
    )
    assert bad.status_code == 400
    assert "'flavorRef' is a required property" in bad.json()["badRequest"]["message"]
    body = {
        "server": {
            "name": "vm",
            "flavorRef": "1",
            "imageRef": "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55",
            "networks": "none",
        }
    }
    r = await cloud.client.post("/compute/v2.1/servers", json=body, headers=h)
    assert r.status_code in (202, 501), r.text


async def test_an_image_to_local_block_device_mapping_is_accepted_as_the_image(
    cloud: Cloud,
) -> None:
    """The openstack CLI sends the image this way; volumes are refused with a reason."""
    h = await cloud.headers(version="2.96")
    image = "9b0b3a25-4c9b-4bb5-8f39-5b8d9f6c3f55"
    bdm = {
        "uuid": image,
        "boot_index": 0,
        "source_type": "image",
        "destination_type": "local",
        "delete_on_termination": True,
    }
    body = {
        "server": {
            "name": "vm",
            "flavorRef": "1",
            "networks": "none",
            "block_device_mapping_v2": [bdm],
        }
    }
    r = await cloud.client.post("/compute/v2.1/servers", json=body, headers=h)
    assert r.status_code in (202, 501), r.text
    volume = {**bdm, "destination_type": "volume"}
    body["server"]["block_device_mapping_v2"] = [volume]
    r = await cloud.client.post("/compute/v2.1/servers", json=body, headers=h)
    assert r.status_code == 400
    assert "no volumes" in r.json()["badRequest"]["message"]


async def test_disk_config_auto_is_taken_as_nova_takes_it_and_other_values_are_refused(
    cloud: Cloud,
) -> None:
    """AUTO is what Horizon's Launch Instance and Tempest send: Loom grows the root disk to
    the flavor's size for both values (the guest grows its file system), so neither is
    refused; anything else is a 400 naming the field."""
    h = await cloud.headers("demo")
    body = {
        "server": {
            "name": "dcf",
            "imageRef": "6f1b5c8e-1d7e-4a57-9d3a-2b8c1f0e9a11",
            "flavorRef": "1",
            "OS-DCF:diskConfig": "AUTO",
        }
    }
    r = await cloud.client.post("/compute/v2.1/servers", json=body, headers=h)
    assert "diskConfig" not in r.text, r.text
    body["server"]["OS-DCF:diskConfig"] = "GROW"
    r = await cloud.client.post("/compute/v2.1/servers", json=body, headers=h)
    assert r.status_code == 400, r.text
    assert "OS-DCF:diskConfig" in r.json()["badRequest"]["message"]
