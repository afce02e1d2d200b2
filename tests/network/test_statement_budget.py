"""What a server's ports cost the database: binding a new one-NIC server and deleting it
take a bounded number of SQL statements, so the cost per boot cannot silently grow back
(every statement is a round trip on the conductor's path of a boot)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from loom.network.v1 import network_pb2 as pb
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.network.conftest import Net

# Binding a new one-NIC server on a network whose DHCP port and default group exist (the
# steady state of a boot storm), port quota at its default.
BIND_BUDGET = 16
DELETE_BUDGET = 4


@contextmanager
def _statements(net: Net) -> Iterator[list[str]]:
    """The SQL statements the network service sends inside the block, in order."""
    engine = net.sessions.kw["bind"]
    assert isinstance(engine, AsyncEngine)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split())[:120])

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def _bind_request(network_id: str, host: str) -> pb.BindDevicePortsRequest:
    return pb.BindDevicePortsRequest(
        request_id=str(uuid.uuid4()),
        project_id="p1",
        device_id=str(uuid.uuid4()),
        host=host,
        requested=[pb.RequestedPort(network_id=network_id)],
    )


async def _steady_network(net: Net) -> str:
    """A network whose first server made the project's default group and its DHCP port."""
    network_id, _ = await net.network_with_subnet("10.60.0.0/24")
    await net.stub.BindDevicePorts(_bind_request(network_id, "h1"))
    return network_id


@pytest.mark.parametrize("net", ["postgresql"], indirect=True)
async def test_binding_a_new_one_nic_server_stays_within_its_statement_budget(net: Net) -> None:
    network_id = await _steady_network(net)
    with _statements(net) as bind:
        bound = await net.stub.BindDevicePorts(_bind_request(network_id, "h2"))
    assert len(bound.ports) == 1
    assert len(bound.dhcp) == 1
    assert len(bind) <= BIND_BUDGET, "\n".join(bind)


@pytest.mark.parametrize("net", ["postgresql"], indirect=True)
async def test_deleting_a_one_nic_server_stays_within_its_statement_budget(net: Net) -> None:
    network_id = await _steady_network(net)
    request = _bind_request(network_id, "h2")
    bound = await net.stub.BindDevicePorts(request)
    with _statements(net) as delete:
        gone = await net.stub.DeleteDevicePorts(
            pb.DeleteDevicePortsRequest(scope=net.scope(), device_id=request.device_id)
        )
    assert list(gone.port_ids) == [bound.ports[0].id]
    assert len(delete) <= DELETE_BUDGET, "\n".join(delete)
