from __future__ import annotations

from tests.gateway.conftest import Cloud


async def test_demo_lists_the_default_flavors(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    r = await cloud.client.get("/compute/v2.1/flavors/detail", headers=h)
    assert r.status_code == 200, r.text
    names = [f["name"] for f in r.json()["flavors"]]
    assert names == ["m1.tiny", "m1.small", "m1.medium", "m1.large", "m1.xlarge"]
