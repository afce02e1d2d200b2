"""CreateServers: validation writes nothing; success writes instance, action and schedule
message together; a retry returns the same servers."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from loom.conductor.v1 import conductor_bus_pb2, servers_pb2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.engine import count_statements
from controlplane.db.models import (
    FlavorProject,
    Instance,
    InstanceAction,
    OutboxMessage,
    Quota,
    ServerGroup,
)
from tests.conductor.conftest import IMAGE_ID, Harness, harness
from tests.conductor.factories import PROJECT, USER, add, make_flavor, make_image, make_keypair


def create_request(**over: Any) -> servers_pb2.CreateServersRequest:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "project_id": PROJECT,
        "user_id": USER,
        "name": "web",
        "flavor_id": "1",
        "image_id": IMAGE_ID,
        "networks": "none",
    }
    values.update(over)
    return servers_pb2.CreateServersRequest(**values)


def make_group(group_id: str, project_id: str) -> ServerGroup:
    return ServerGroup(
        id=group_id,
        name="g",
        project_id=project_id,
        user_id=USER,
        policy="anti-affinity",
        rules={},
        created_at=datetime.now(UTC),
    )


async def counts(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int, int]:
    async with sessions() as s:
        return (
            (await s.execute(select(func.count(Instance.id)))).scalar_one(),
            (await s.execute(select(func.count(InstanceAction.id)))).scalar_one(),
            (await s.execute(select(func.count(OutboxMessage.id)))).scalar_one(),
        )


@pytest.mark.parametrize(
    ("over", "setup", "code", "words"),
    [
        pytest.param(
            {"flavor_id": "nope"},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Flavor",
            id="a missing flavor is an invalid argument",
        ),
        pytest.param(
            {"image_id": "00000000-0000-0000-0000-000000000000"},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Image",
            id="a missing image",
        ),
        pytest.param(
            {"flavor_id": "off"},
            "disabled_flavor",
            grpc.StatusCode.INVALID_ARGUMENT,
            "disabled",
            id="a disabled flavor",
        ),
        pytest.param(
            {"image_id": "22222222-2222-2222-2222-222222222222"},
            "queued_image",
            grpc.StatusCode.INVALID_ARGUMENT,
            "not active",
            id="an image not active",
        ),
        pytest.param(
            {"image_id": "33333333-3333-3333-3333-333333333333"},
            "private_image",
            grpc.StatusCode.INVALID_ARGUMENT,
            "Image",
            id="another project's image",
        ),
        pytest.param(
            {"key_name": "absent"},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "key_name",
            id="an unknown keypair",
        ),
        pytest.param(
            {"min_count": 3, "max_count": 2},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "min_count",
            id="min_count above max_count",
        ),
        pytest.param(
            {"min_count": 11},
            None,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "instances",
            id="more instances than the quota",
        ),
        pytest.param(
            {"flavor_id": "big", "min_count": 3},
            None,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "cores",
            id="more cores than the quota",
        ),
        pytest.param(
            {"flavor_id": "1"},
            "ram_quota",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "ram",
            id="more ram than the project's own limit",
        ),
        pytest.param(
            {"flavor_id": "priv"},
            "private_flavor",
            grpc.StatusCode.INVALID_ARGUMENT,
            "Flavor priv could not be found",
            id="a private flavor, for a caller not allowed private flavors",
        ),
        pytest.param(
            {"server_group_id": "44444444-4444-4444-4444-444444444444"},
            None,
            grpc.StatusCode.INVALID_ARGUMENT,
            "Instance group",
            id="an unknown server group (its policy could not be kept)",
        ),
        pytest.param(
            {"server_group_id": "55555555-5555-5555-5555-555555555555"},
            "foreign_group",
            grpc.StatusCode.INVALID_ARGUMENT,
            "Instance group",
            id="another project's server group",
        ),
        pytest.param(
            {"server_group_id": "66666666-6666-6666-6666-666666666666", "min_count": 3},
            "small_group_quota",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "server_group_members",
            id="more members than the group may have",
        ),
    ],
)
async def test_an_invalid_create_fails_with_its_code_and_writes_nothing(
    pg: Harness, over: dict[str, Any], setup: str | None, code: grpc.StatusCode, words: str
) -> None:
    if setup == "disabled_flavor":
        await add(pg.sessions, make_flavor("off", name="off", disabled=True))
    elif setup == "private_flavor":
        await add(pg.sessions, make_flavor("priv", name="priv", is_public=False))
    elif setup == "queued_image":
        await add(pg.sessions, make_image("22222222-2222-2222-2222-222222222222", status="queued"))
    elif setup == "private_image":
        await add(
            pg.sessions,
            make_image(
                "33333333-3333-3333-3333-333333333333", visibility="private", owner="someone-else"
            ),
        )
    elif setup == "ram_quota":
        await add(pg.sessions, Quota(project_id=PROJECT, resource="ram", hard_limit=100))
    elif setup == "foreign_group":
        await add(pg.sessions, make_group("55555555-5555-5555-5555-555555555555", "elsewhere"))
    elif setup == "small_group_quota":
        await add(pg.sessions, make_group("66666666-6666-6666-6666-666666666666", PROJECT))
        await add(
            pg.sessions, Quota(project_id=PROJECT, resource="server_group_members", hard_limit=2)
        )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pg.servers.CreateServers(create_request(**over))
    assert info.value.code() == code
    assert words in (info.value.details() or "")
    assert await counts(pg.sessions) == (0, 0, 0)


async def test_a_private_flavor_boots_for_a_caller_allowed_private_flavors(pg: Harness) -> None:
    await add(pg.sessions, make_flavor("priv", name="priv", is_public=False))
    resp = await pg.servers.CreateServers(
        create_request(flavor_id="priv", private_flavors_allowed=True)
    )
    assert [s.flavor.name for s in resp.servers] == ["priv"]


async def test_a_private_flavor_shared_with_the_project_boots_for_its_members(
    pg: Harness,
) -> None:
    flavor = make_flavor("priv", name="priv", is_public=False)
    await add(pg.sessions, flavor)
    await add(pg.sessions, FlavorProject(flavor_id=flavor.id, project_id=PROJECT))
    resp = await pg.servers.CreateServers(create_request(flavor_id="priv"))
    assert [s.flavor.name for s in resp.servers] == ["priv"]


async def test_create_writes_instances_actions_and_schedule_messages_together(pg: Harness) -> None:
    resp = await pg.servers.CreateServers(create_request(min_count=2, max_count=2))
    assert [s.name for s in resp.servers] == ["web-1", "web-2"]
    assert re.fullmatch(r"r-[a-z0-9]{8}", resp.reservation_id)
    assert all(s.status == servers_pb2.SERVER_STATUS_BUILD for s in resp.servers)
    assert all(s.task_state == servers_pb2.TASK_STATE_SCHEDULING for s in resp.servers)
    assert await counts(pg.sessions) == (2, 2, 2)
    async with pg.sessions() as s:
        rows = (await s.execute(select(OutboxMessage).order_by(OutboxMessage.id))).scalars().all()
        ids = (await s.execute(select(Instance.id).order_by(Instance.id))).scalars().all()
    assert {r.subject for r in rows} == {"loom.conductor.schedule"}
    payloads = [conductor_bus_pb2.ScheduleInstanceMessage.FromString(r.payload) for r in rows]
    assert {p.instance_id for p in payloads} == {s.id for s in resp.servers}
    assert {p.attempt for p in payloads} == {1}
    assert [s.instance_name for s in resp.servers] == [f"instance-{i:08x}" for i in ids]


async def test_a_retried_create_returns_the_same_servers_and_writes_nothing_more(
    pg: Harness,
) -> None:
    first = await pg.servers.CreateServers(create_request(min_count=3, max_count=3))
    again = await pg.servers.CreateServers(create_request(min_count=3, max_count=3))
    assert [s.id for s in again.servers] == [s.id for s in first.servers]
    assert again.reservation_id == first.reservation_id
    assert await counts(pg.sessions) == (3, 3, 3)


async def test_a_retry_that_would_now_exceed_the_quota_still_returns_the_servers(
    pg: Harness,
) -> None:
    first = await pg.servers.CreateServers(create_request(min_count=10, max_count=10))
    again = await pg.servers.CreateServers(create_request(min_count=10, max_count=10))
    assert [s.id for s in again.servers] == [s.id for s in first.servers]


async def test_max_count_is_trimmed_to_what_the_quota_allows(pg: Harness) -> None:
    resp = await pg.servers.CreateServers(create_request(min_count=1, max_count=50))
    assert len(resp.servers) == 10


async def test_networks_none_gives_no_address_and_a_keypair_is_embedded(pg: Harness) -> None:
    await add(pg.sessions, make_keypair("mykey"))
    resp = await pg.servers.CreateServers(create_request(networks="none", key_name="mykey"))
    assert list(resp.servers[0].addresses) == []
    assert resp.servers[0].key_name == "mykey"
    async with pg.sessions() as s:
        inst = (await s.execute(select(Instance))).scalar_one()
    assert inst.key_data == "ssh-ed25519 AAAA test"


async def test_a_single_create_costs_few_statements(pg: Harness) -> None:
    counter = count_statements(pg.engine)
    await pg.servers.CreateServers(create_request())
    # the project's create lock (its quota has limits: the check must see every earlier
    # create), validation (one query, which also draws the ids; the flavor's access too),
    # then ONE statement writing the instance, its action and its schedule message
    assert 0 < counter.count <= 3, counter.count


async def test_create_works_on_sqlite_too(sqlite_url: str) -> None:
    async with harness(sqlite_url) as h:
        first = await h.servers.CreateServers(create_request(min_count=2, max_count=2))
        again = await h.servers.CreateServers(create_request(min_count=2, max_count=2))
        assert [s.id for s in again.servers] == [s.id for s in first.servers]
        assert await counts(h.sessions) == (2, 2, 2)


async def test_the_created_servers_are_returned_as_a_read_shows_them(pg: Harness) -> None:
    """The response is built from the rows as written (never flushed through the ORM on
    PostgreSQL): it must say what reading them back says."""
    resp = await pg.servers.CreateServers(
        create_request(min_count=2, max_count=2, metadata={"k": "v"}, tags=["t1"])
    )
    for created in resp.servers:
        read = await pg.servers.GetServer(servers_pb2.GetServerRequest(id=created.id))
        assert created == read.server
