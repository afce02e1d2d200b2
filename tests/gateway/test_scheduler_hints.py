"""Server create's scheduler hints at the gateway: `group`, `same_host` and
`different_host` are honoured, each of the last two a server UUID or a list of them; a bad
value or any other hint is a 400 in the compute API's shape. From 2.100 a server shows the
hints it was created with. The gateway in front of the real conductor and scheduler."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import Cloud
from tests.gateway.full_cloud import full_cloud
from tests.gateway.shapes import assert_shape

A = "0e5f2b1c-7d55-4c6c-9a53-6d1c1f3d2b10"
B = "5a1b8c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"


@pytest.fixture
async def cloud(pg_url: str, tmp_path: Path) -> AsyncIterator[Cloud]:
    async with full_cloud(pg_url, tmp_path / "data") as cloud:
        yield cloud


@pytest.fixture
async def image(cloud: Cloud) -> str:
    """A public, active image to boot (and the default flavors, in place once listed)."""
    admin = await cloud.headers("admin")
    assert (await cloud.client.get("/compute/v2.1/flavors", headers=admin)).status_code == 200
    r = await cloud.client.post(
        "/image/v2/images",
        json={"name": "boot", "visibility": "public", "disk_format": "raw"}
        | {"container_format": "bare"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    image_id = str(r.json()["id"])
    r = await cloud.client.put(
        f"/image/v2/images/{image_id}/file",
        content=b"\0" * 1024,
        headers={**admin, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 204, r.text
    return image_id


async def create(
    cloud: Cloud, image: str, hints: Any, key: str = "os:scheduler_hints"
) -> tuple[int, Any]:
    body = {
        "server": {"name": "hinted", "flavorRef": "1", "imageRef": image, "networks": "none"},
        key: hints,
    }
    r = await cloud.client.post(
        "/compute/v2.1/servers", json=body, headers=await cloud.headers(version="2.37")
    )
    return r.status_code, r.json()


async def shown(cloud: Cloud, sid: str, version: str = "2.100") -> dict[str, Any]:
    r = await cloud.client.get(
        f"/compute/v2.1/servers/{sid}", headers=await cloud.headers(version=version)
    )
    assert r.status_code == 200, r.text
    assert_shape(f"server_show_v{version}", r.json())
    server: dict[str, Any] = r.json()["server"]
    return server


@pytest.mark.parametrize(
    ("hints", "shows"),
    [
        ({"same_host": A}, {"same_host": [A]}),
        ({"same_host": [A, B]}, {"same_host": [A, B]}),
        ({"different_host": B}, {"different_host": [B]}),
        ({"same_host": [A], "different_host": [B]}, {"same_host": [A], "different_host": [B]}),
        # Nova's UUID form takes no hyphens and any case; Loom keeps the canonical form.
        ({"different_host": [A.replace("-", "").upper(), A]}, {"different_host": [A]}),
        ({"same_host": []}, {}),
    ],
)
async def test_same_host_and_different_host_are_accepted_and_shown_from_2_100(
    cloud: Cloud, image: str, hints: dict[str, Any], shows: dict[str, list[str]]
) -> None:
    status, body = await create(cloud, image, hints)
    assert status == 202, body
    server = await shown(cloud, body["server"]["id"])
    assert server["scheduler_hints"] == shows
    assert "scheduler_hints" not in await shown(cloud, body["server"]["id"], "2.96")


async def test_the_legacy_hints_key_is_taken_the_same(cloud: Cloud, image: str) -> None:
    status, body = await create(cloud, image, {"same_host": A}, key="OS-SCH-HNT:scheduler_hints")
    assert status == 202, body
    assert (await shown(cloud, body["server"]["id"]))["scheduler_hints"] == {"same_host": [A]}


@pytest.mark.parametrize("name", ["same_host", "different_host"])
@pytest.mark.parametrize(
    "value",
    [42, "not-a-uuid", ["not-a-uuid"], [A, 7], {"id": A}, None, True, [A] * 1001],
    ids=["number", "string", "list-item", "list-number", "object", "null", "bool", "1001"],
)
async def test_a_bad_same_host_or_different_host_value_is_a_400_naming_the_hint(
    cloud: Cloud, image: str, name: str, value: Any
) -> None:
    status, body = await create(cloud, image, {name: value})
    assert status == 400, body
    assert_shape("nova_error", body)
    message = body["badRequest"]["message"]
    assert message.startswith(f"Invalid input for field/attribute {name}. Value: ")
    assert message.endswith(
        f"The {name} scheduler hint takes a server UUID or a list of at most 1000 server UUIDs."
    )


async def test_any_other_hint_is_still_refused_naming_the_honoured_ones(
    cloud: Cloud, image: str
) -> None:
    status, body = await create(cloud, image, {"same_host": A, "build_near_host_ip": "10.0.0.1"})
    assert status == 400, body
    assert body["badRequest"] == {
        "code": 400,
        "message": "Loom's scheduler does not honour the scheduler hint(s) build_near_host_ip;"
        " only 'different_host', 'group' and 'same_host' are.",
    }


async def test_a_server_named_by_a_hint_need_not_exist_when_created(
    cloud: Cloud, image: str
) -> None:
    """As in Nova: the hint is the scheduler's to apply (an unknown server is on no host),
    not a reference the API checks."""
    missing = str(uuid.uuid4())
    status, body = await create(cloud, image, {"different_host": missing})
    assert status == 202, body
    server = await shown(cloud, body["server"]["id"])
    assert server["scheduler_hints"] == {"different_host": [missing]}
