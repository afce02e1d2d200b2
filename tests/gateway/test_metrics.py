"""The gateway times every REST request by method, route template and status: a path that
carries ids counts under its template, never under itself."""

from __future__ import annotations

from prometheus_client import REGISTRY

from tests.gateway.conftest import Cloud

FLAVOR = "/compute/v2.1/flavors/{flavor_id}"


def requests(method: str, route: str, status: int) -> float:
    return (
        REGISTRY.get_sample_value(
            "loom_http_request_duration_seconds_count",
            {"method": method, "route": route, "status": str(status)},
        )
        or 0
    )


def series_routes() -> set[str]:
    return {
        s.labels["route"]
        for family in REGISTRY.collect()
        if family.name == "loom_http_request_duration_seconds"
        for s in family.samples
    }


async def test_requests_count_under_the_route_template_with_their_status(cloud: Cloud) -> None:
    h = await cloud.headers("demo")
    flavors = (await cloud.client.get("/compute/v2.1/flavors", headers=h)).json()["flavors"]
    flavor_id = flavors[0]["id"]
    before = requests("GET", FLAVOR, 200), requests("GET", FLAVOR, 404)

    assert (await cloud.client.get(f"/compute/v2.1/flavors/{flavor_id}", headers=h)).is_success
    assert (await cloud.client.get("/compute/v2.1/flavors/no-such", headers=h)).status_code == 404

    assert requests("GET", FLAVOR, 200) == before[0] + 1
    assert requests("GET", FLAVOR, 404) == before[1] + 1
    routes = series_routes()
    assert FLAVOR in routes
    assert not any(f"/flavors/{flavor_id}" in r or "no-such" in r for r in routes), routes


async def test_a_path_no_route_takes_counts_as_unmatched(cloud: Cloud) -> None:
    before = requests("GET", "unmatched", 404)
    assert (await cloud.client.get("/compute/v2.1/no-such-thing/42")).status_code == 404
    assert requests("GET", "unmatched", 404) == before + 1
    assert not any("no-such-thing" in route for route in series_routes())


async def test_the_gateway_times_its_calls_to_the_conductor(cloud: Cloud) -> None:
    labels = {
        "grpc_service": "loom.catalog.v1.FlavorsService",
        "grpc_method": "ListFlavors",
        "grpc_code": "OK",
    }
    name = "loom_grpc_client_handling_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0
    h = await cloud.headers("demo")
    assert (await cloud.client.get("/compute/v2.1/flavors", headers=h)).is_success
    assert (REGISTRY.get_sample_value(name, labels) or 0) == before + 1
