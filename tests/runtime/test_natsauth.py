"""NATS users: the control plane may use every subject; an agent only its own hosts'."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError

from controlplane.config import NatsConfig
from controlplane.runtime import bus, natsauth
from controlplane.runtime.natsserver import NatsServerProcess, start_nats_server


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[tuple[NatsServerProcess, list[natsauth.NatsUser]]]:
    users = [
        natsauth.NatsUser("conductor", natsauth.password_for(tmp_path / "users", "conductor")),
        natsauth.NatsUser(
            "agent",
            natsauth.password_for(tmp_path / "users", "agent"),
            natsauth.agent_permissions("agent", ["h1"]),
        ),
    ]
    server = start_nats_server(tmp_path / "nats", authorization=natsauth.authorization_block(users))
    try:
        yield server, users
    finally:
        server.stop()


async def _connect(server: NatsServerProcess, user: natsauth.NatsUser) -> NATS:
    cfg = NatsConfig(url=server.url, user=user.name, password=user.password)
    return await bus.connect(server.url, cfg, f"test-{user.name}", max_reconnect_attempts=0)


@pytest.fixture
async def clients(
    secured_nats: tuple[NatsServerProcess, list[natsauth.NatsUser]],
) -> AsyncIterator[tuple[NATS, NATS]]:
    server, (conductor_user, agent_user) = secured_nats
    conductor = await _connect(server, conductor_user)
    await bus.ensure_streams(conductor.jetstream(), NatsConfig())
    agent = await _connect(server, agent_user)
    try:
        yield conductor, agent
    finally:
        await agent.close()
        await conductor.close()


async def test_a_client_without_a_user_is_refused(
    secured_nats: tuple[NatsServerProcess, list[natsauth.NatsUser]],
) -> None:
    server, _ = secured_nats
    anonymous = NATS()
    try:
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await anonymous.connect(server.url, allow_reconnect=False, connect_timeout=5)
    finally:
        await anonymous.close()


async def test_an_agent_cannot_publish_another_hosts_commands_or_events(
    clients: tuple[NATS, NATS],
) -> None:
    conductor, agent = clients
    js = conductor.jetstream()
    await agent.publish(bus.compute_subject("h2", "build"), b"forged")
    await agent.publish(bus.heartbeat_subject("h2"), b"forged")
    with pytest.raises(NatsTimeoutError):
        await agent.jetstream().publish(
            bus.instance_event_subject("h2"), b"forged", stream=bus.EVENTS_STREAM, timeout=1
        )
    await agent.flush()
    # The control plane's own publishes go through, so the streams did work.
    await js.publish(bus.compute_subject("h1", "build"), b"real", stream=bus.COMPUTE_STREAM)
    info = await js.stream_info(bus.COMPUTE_STREAM)
    assert info.state.messages == 1
    assert (await js.stream_info(bus.EVENTS_STREAM)).state.messages == 0


async def test_an_agent_consumes_its_own_commands_and_publishes_its_own_events(
    clients: tuple[NATS, NATS],
) -> None:
    conductor, agent = clients
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_beat(msg: object) -> None:
        await heard.put(msg.data)  # type: ignore[attr-defined]

    await conductor.subscribe(bus.HEARTBEAT_WILDCARD, cb=on_beat)
    await conductor.flush()
    await bus.wait_for_streams(agent.jetstream(), timeout_s=5)
    await conductor.jetstream().publish(
        bus.compute_subject("h1", "build"), b"cmd", stream=bus.COMPUTE_STREAM
    )
    ajs = agent.jetstream()
    psub = await ajs.pull_subscribe(
        bus.compute_host_filter("h1"), durable="agent-h1", stream=bus.COMPUTE_STREAM
    )
    (msg,) = await psub.fetch(1, timeout=5)
    assert msg.data == b"cmd"
    await msg.ack()
    await ajs.publish(bus.instance_event_subject("h1"), b"event", stream=bus.EVENTS_STREAM)
    await agent.publish(bus.heartbeat_subject("h1"), b"beat")
    assert await asyncio.wait_for(heard.get(), 5) == b"beat"
    # Another host's consumer is out of reach.
    with pytest.raises(NatsTimeoutError):
        await ajs.pull_subscribe(
            bus.compute_host_filter("h2"),
            durable="agent-h2",
            stream=bus.COMPUTE_STREAM,
            pending_msgs_limit=1,
        )
