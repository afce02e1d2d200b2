"""/openapi.json describes the route table and the schemas the handlers enforce."""

from __future__ import annotations

from typing import Any

from starlette.routing import BaseRoute, Route

from gateway.app import all_routes
from gateway.compute import flavors, migrations, servers
from gateway.routing import doc_of
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


def undeclared(routes: list[BaseRoute]) -> list[str]:
    """Methods and paths of the routes whose handler declares no policy."""
    return [
        f"{','.join(sorted(r.methods or ()))} {r.path}"
        for r in routes
        if isinstance(r, Route) and doc_of(r.endpoint).policy is None
    ]


def test_every_route_and_every_server_action_declares_a_policy() -> None:
    assert undeclared(all_routes()) == []
    declared = servers.SERVER_ACTION_POLICY.actions
    dispatched = {*servers.ACTION_SCHEMA["properties"], *migrations.MOVE_ACTIONS}
    assert set(declared) == dispatched


def test_a_route_whose_handler_declares_no_policy_is_named() -> None:
    async def bare(request: Any) -> Any:
        raise AssertionError

    assert undeclared([Route("/bare", bare, methods=["GET"])]) == ["GET,HEAD /bare"]


async def test_each_operation_publishes_its_declared_policy(cloud: Cloud) -> None:
    doc = (await cloud.client.get("/openapi.json")).json()
    for route in all_routes():
        assert isinstance(route, Route)
        policy = doc_of(route.endpoint).policy
        assert policy is not None
        for method in (route.methods or set()) - {"HEAD"}:
            published = doc["paths"][route.path][method.lower()]["x-loom-policy"]
            assert published == policy.describe(), (method, route.path)
    action = doc["paths"]["/compute/v2.1/servers/{server_id}/action"]["post"]["x-loom-policy"]
    assert (action["actions"]["os-stop"], action["actions"]["migrate"]) == (
        {"rule": "member"},
        {"rule": "admin"},
    )
    quota = doc["paths"]["/compute/v2.1/os-quota-sets/{project_id}"]["get"]["x-loom-policy"]
    assert quota == {"rule": "reader", "owner": "project_id"}
    assert doc["paths"]["/compute/v2.1/flavors"]["post"]["x-loom-policy"] == {"rule": "admin"}
