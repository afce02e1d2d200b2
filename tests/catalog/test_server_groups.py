"""ServerGroupsService: project scoping, rule checks, retried creates."""

from __future__ import annotations

import grpc
import pytest
from loom.conductor.v1 import server_groups_pb2

from tests.catalog.conftest import Stubs


async def test_server_groups_are_scoped_to_their_project(stubs: Stubs) -> None:
    group = (
        await stubs.server_groups.CreateServerGroup(
            server_groups_pb2.CreateServerGroupRequest(
                group=server_groups_pb2.ServerGroup(
                    name="g",
                    project_id="p1",
                    user_id="u",
                    policy="anti-affinity",
                    rules={"max_server_per_host": "2"},
                )
            )
        )
    ).group
    assert list(group.members) == []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.server_groups.GetServerGroup(
            server_groups_pb2.GetServerGroupRequest(id=group.id, project_id="p2")
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stubs.server_groups.CreateServerGroup(
            server_groups_pb2.CreateServerGroupRequest(
                group=server_groups_pb2.ServerGroup(
                    name="g2",
                    project_id="p1",
                    policy="affinity",
                    rules={"max_server_per_host": "2"},
                )
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_retried_server_group_create_makes_one_group(stubs: Stubs) -> None:
    req = server_groups_pb2.CreateServerGroupRequest(
        request_id="req-9",
        group=server_groups_pb2.ServerGroup(name="g", project_id="p", policy="affinity"),
    )
    first = (await stubs.server_groups.CreateServerGroup(req)).group
    again = (await stubs.server_groups.CreateServerGroup(req)).group
    assert again.id == first.id
    listed = await stubs.server_groups.ListServerGroups(
        server_groups_pb2.ListServerGroupsRequest(project_id="p")
    )
    assert len(listed.groups) == 1
