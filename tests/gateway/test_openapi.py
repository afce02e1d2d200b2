"""/openapi.json describes the route table and the schemas the handlers enforce."""

from __future__ import annotations

from starlette.routing import Route

from gateway.app import all_routes
from gateway.compute import flavors
from tests.gateway.conftest import Cloud


async def test_every_route_and_method_is_in_the_document(cloud: Cloud) -> None:
    doc = (await cloud.client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    for route in all_routes():
        assert isinstance(route, Route)
        path = route.path
        assert path in doc["paths"], path
        for method in (route.methods or set()) - {"HEAD"}:
            assert method.lower() in doc["paths"][path], (method, path)


async def test_a_documented_request_schema_is_the_one_enforced(cloud: Cloud) -> None:
    doc = (await cloud.client.get("/openapi.json")).json()
    op = doc["paths"]["/compute/v2.1/flavors"]["post"]
    published = op["requestBody"]["content"]["application/json"]["schema"]
    assert published == flavors.create_flavor.__loom_doc__.body.schema  # type: ignore[attr-defined]
    params = {p["name"] for p in doc["paths"]["/compute/v2.1/flavors"]["get"]["parameters"]}
    assert params == {q.name for q in flavors.LIST_QUERY}
