"""Reading servers: project scoping, filters, sorting and marker pagination."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from loom.catalog.v1 import quotas_pb2
from loom.conductor.v1 import servers_pb2

from tests.conductor.conftest import Harness, conductor_config, harness
from tests.conductor.factories import add, make_instance

S = servers_pb2.ServerStatus
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


def stamp(value: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(value)
    return out


async def names(h: Harness, **kw: Any) -> list[str]:
    resp = await h.servers.ListServers(servers_pb2.ListServersRequest(**kw))
    return [s.name for s in resp.servers]


@pytest.fixture
async def fleet(pg: Harness) -> Harness:
    await add(
        pg.sessions,
        make_instance(
            name="alpha",
            created_at=at(1),
            updated_at=at(1),
            host="h1",
            availability_zone="z1",
            reservation_id="r-aaaaaaaa",
            addresses=[{"network": "private", "address": "10.0.0.5", "version": 4}],
        ),
        make_instance(
            name="beta",
            created_at=at(2),
            updated_at=at(20),
            host="h2",
            vm_state="stopped",
            power_state=4,
            image_id="img-b",
        ),
        make_instance(
            name="gamma",
            created_at=at(3),
            updated_at=at(3),
            host="h1",
            task_state="rebooting",
            flavor_id="big",
        ),
        make_instance(
            name="delta",
            created_at=at(4),
            updated_at=at(30),
            host="h1",
            vm_state="deleted",
            deleted=True,
        ),
        make_instance(
            name="other",
            created_at=at(5),
            updated_at=at(5),
            project_id="project-b",
            user_id="user-b",
        ),
        make_instance(
            name="building",
            created_at=at(6),
            updated_at=at(6),
            host=None,
            vm_state="building",
            task_state="scheduling",
        ),
    )
    return pg


async def test_a_project_sees_only_its_own_servers(fleet: Harness) -> None:
    assert await names(fleet, project_id="project-a") == ["building", "gamma", "beta", "alpha"]
    assert await names(fleet, project_id="project-b") == ["other"]
    other = (
        await fleet.servers.ListServers(servers_pb2.ListServersRequest(project_id="project-b"))
    ).servers[0]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fleet.servers.GetServer(
            servers_pb2.GetServerRequest(id=other.id, project_id="project-a")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"name": "^(al|ga)"}, ["gamma", "alpha"], id="name is a regular expression"),
        pytest.param({"statuses": [S.SERVER_STATUS_SHUTOFF]}, ["beta"], id="status SHUTOFF"),
        pytest.param(
            {"statuses": [S.SERVER_STATUS_ACTIVE]},
            ["alpha"],
            id="status ACTIVE excludes a rebooting server",
        ),
        pytest.param(
            {"statuses": [S.SERVER_STATUS_REBOOT, S.SERVER_STATUS_BUILD]},
            ["building", "gamma"],
            id="several statuses",
        ),
        pytest.param({"host": "h1"}, ["gamma", "alpha"], id="host"),
        pytest.param({"image_id": "img-b"}, ["beta"], id="image"),
        pytest.param({"flavor_id": "big"}, ["gamma"], id="flavor"),
        pytest.param({"reservation_id": "r-aaaaaaaa"}, ["alpha"], id="reservation"),
        pytest.param({"availability_zone": "z1"}, ["alpha"], id="availability zone"),
        pytest.param({"ip": r"10\.0\.0\.5$"}, ["alpha"], id="ip is a regular expression"),
        pytest.param({"vm_states": [servers_pb2.VM_STATE_STOPPED]}, ["beta"], id="vm state"),
        pytest.param(
            {"include_deleted": True},
            ["building", "delta", "gamma", "beta", "alpha"],
            id="deleted servers on request",
        ),
        pytest.param(
            {"changes_since": stamp(at(10))},
            ["delta", "beta"],
            id="changes since includes deleted servers",
        ),
        pytest.param({"changes_before": stamp(at(3))}, ["gamma", "alpha"], id="changes before"),
        pytest.param(
            {"sort_key": "name", "sort_dir": "asc"},
            ["alpha", "beta", "building", "gamma"],
            id="sorted by name",
        ),
    ],
)
async def test_list_filters(fleet: Harness, filters: dict[str, Any], expected: list[str]) -> None:
    assert await names(fleet, project_id="project-a", **filters) == expected


async def test_ids_filter_selects_those_servers(fleet: Harness) -> None:
    every = await fleet.servers.ListServers(servers_pb2.ListServersRequest())
    wanted = [s.id for s in every.servers if s.name in ("alpha", "other")]
    assert sorted(await names(fleet, ids=wanted)) == ["alpha", "other"]


async def test_pages_follow_the_marker_until_the_last_has_no_next_marker(fleet: Harness) -> None:
    seen: list[str] = []
    marker = ""
    pages = 0
    while True:
        resp = await fleet.servers.ListServers(
            servers_pb2.ListServersRequest(project_id="project-a", limit=3, marker=marker)
        )
        seen += [s.name for s in resp.servers]
        pages += 1
        if not resp.next_marker:
            break
        marker = resp.next_marker
    assert seen == ["building", "gamma", "beta", "alpha"]
    assert pages == 2


async def test_a_filtered_page_is_full_before_it_offers_a_next_marker(fleet: Harness) -> None:
    resp = await fleet.servers.ListServers(
        servers_pb2.ListServersRequest(project_id="project-a", name="a", limit=1)
    )
    assert [s.name for s in resp.servers] == ["gamma"]
    resp = await fleet.servers.ListServers(
        servers_pb2.ListServersRequest(
            project_id="project-a", name="a", limit=5, marker=resp.next_marker
        )
    )
    assert [s.name for s in resp.servers] == ["beta", "alpha"]
    assert resp.next_marker == ""


async def test_page_size_is_capped_at_the_configured_maximum(pg_url: str) -> None:
    async with harness(pg_url, conductor_config(max_limit=2)) as h:
        await add(h.sessions, *(make_instance(name=f"s{i}", created_at=at(i)) for i in range(3)))
        resp = await h.servers.ListServers(servers_pb2.ListServersRequest(limit=50))
        assert len(resp.servers) == 2
        assert resp.next_marker


@pytest.mark.parametrize(
    "bad",
    [{"marker": "no-such"}, {"sort_key": "password"}, {"sort_dir": "sideways"}, {"name": "("}],
)
async def test_bad_list_arguments_are_refused(fleet: Harness, bad: dict[str, Any]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await names(fleet, **bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_metadata_merges_replaces_and_respects_the_quota(pg: Harness) -> None:
    row = make_instance(metadata_={"a": "1"})
    await add(pg.sessions, row)
    merged = await pg.servers.SetServerMetadata(
        servers_pb2.SetServerMetadataRequest(id=row.uuid, metadata={"b": "2"})
    )
    assert dict(merged.metadata) == {"a": "1", "b": "2"}
    replaced = await pg.servers.SetServerMetadata(
        servers_pb2.SetServerMetadataRequest(id=row.uuid, metadata={"c": "3"}, replace=True)
    )
    assert dict(replaced.metadata) == {"c": "3"}
    await pg.servers.DeleteServerMetadataItem(
        servers_pb2.DeleteServerMetadataItemRequest(id=row.uuid, key="c")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.servers.DeleteServerMetadataItem(
            servers_pb2.DeleteServerMetadataItemRequest(id=row.uuid, key="c")
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    await pg.quotas.UpdateQuotas(
        quotas_pb2.UpdateQuotasRequest(project_id=row.project_id, limits={"metadata_items": 1})
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.servers.SetServerMetadata(
            servers_pb2.SetServerMetadataRequest(id=row.uuid, metadata={"x": "1", "y": "2"})
        )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_update_changes_only_the_given_fields(pg: Harness) -> None:
    row = make_instance(name="old", description="keep")
    await add(pg.sessions, row)
    resp = await pg.servers.UpdateServer(servers_pb2.UpdateServerRequest(id=row.uuid, name="new"))
    assert resp.server.name == "new"
    assert resp.server.description == "keep"


@pytest.mark.parametrize(
    "pattern",
    ["^bench-1", "bench-1", "^Bench", "h_1", "^bench_", "1-2", "^b.nch", "x|bench-12", "-1$"],
)
async def test_a_name_filter_done_in_sql_lists_what_the_regular_expression_matches(
    pg: Harness, pattern: str
) -> None:
    import re

    all_names = ["bench-1", "bench-12", "bench-2", "bench_1", "Bench-1", "xbench-1", "b%nch-1"]
    await add(pg.sessions, *(make_instance(name=n) for n in all_names))
    expected = sorted(n for n in all_names if re.search(pattern, n))
    assert sorted(await names(pg, project_id="project-a", name=pattern)) == expected
