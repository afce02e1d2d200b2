"""A three-node JetStream cluster: Loom's streams keep three copies, and a client given every
node's URL carries on through a survivor when the node it used is killed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from controlplane.config import NatsConfig, load_config
from controlplane.runtime import bus
from controlplane.runtime.natsserver import (
    ClusterNode,
    NatsCluster,
    Route,
    find_nats_server,
    free_port,
    server_config,
    start_nats_cluster,
)

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_CFG = NatsConfig(duplicate_window_s=120, stream_replicas=3)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = start_nats_cluster(tmp_path / "cluster", route_password="route-secret")
    try:
        yield nats
    finally:
        nats.stop()


def test_a_cluster_node_s_config_names_it_and_routes_to_every_other_node(tmp_path: Path) -> None:
    node = ClusterNode(
        server_name="loom-nats-0",
        cluster_port=6222,
        routes=(Route("10.0.0.2", 6222), Route("10.0.0.3", 6222)),
        host="10.0.0.1",
        route_password="p@ss",
    )
    conf = server_config(tmp_path, 4222, cluster=node)
    assert 'server_name: "loom-nats-0"' in conf
    assert "listen: 10.0.0.1:4222" in conf
    assert "listen: 10.0.0.1:6222" in conf
    # The password is URL-encoded in the routes, and every route presents it.
    assert (
        'routes: ["nats://route:p%40ss@10.0.0.2:6222", "nats://route:p%40ss@10.0.0.3:6222"]' in conf
    )
    assert 'authorization { user: "route", password: "p@ss" }' in conf
    assert "sync_interval: always" in conf


def test_nats_url_may_name_every_node_of_a_cluster() -> None:
    cfg = load_config(
        environ={
            "LOOM_NATS__URL": "nats://a:4222, nats://b:4222,nats://c:4222",
            "LOOM_NATS__STREAM_REPLICAS": "3",
        }
    )
    assert cfg.nats.servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert cfg.nats.stream_replicas == 3
    assert NatsConfig().stream_replicas == 1


async def test_streams_on_a_three_node_cluster_keep_three_copies(cluster: NatsCluster) -> None:
    nc = await bus.connect(cluster.url, CLUSTER_CFG, "test-streams")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, CLUSTER_CFG)
        for name in (bus.COMPUTE_STREAM, bus.CONDUCTOR_STREAM, bus.EVENTS_STREAM):
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3
            assert info.cluster is not None
            assert info.cluster.leader
            assert len(info.cluster.replicas or []) == 2
        # A process starting later with the same settings changes nothing.
        await bus.ensure_streams(js, CLUSTER_CFG)
        assert (await js.stream_info(bus.COMPUTE_STREAM)).config.num_replicas == 3
    finally:
        await nc.close()


async def _publish_until_acked(js: JetStreamContext, subject: str, msg_id: str) -> None:
    """As the outbox relay does: a publish whose ack does not come is sent again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await js.publish(subject, b"x", timeout=1.0, headers={"Nats-Msg-Id": msg_id})
            return
        except (
            NatsTimeoutError,
            NoRespondersError,
            NoStreamResponseError,
            ServiceUnavailableError,
        ):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_a_client_carries_on_through_a_survivor_when_its_node_and_the_leader_die(
    cluster: NatsCluster,
) -> None:
    nc = await bus.connect(cluster.url, CLUSTER_CFG, "test-failover")
    try:
        js = nc.jetstream()
        await bus.ensure_streams(js, CLUSTER_CFG)
        subject = bus.compute_subject("h1", "delete")
        for i in range(50):
            await _publish_until_acked(js, subject, f"m-{i}")
        names = [n.cluster.server_name for n in cluster.nodes if n.cluster is not None]
        leader = (await js.stream_info(bus.COMPUTE_STREAM)).cluster.leader  # type: ignore[union-attr]
        connected = next(
            i
            for i, n in enumerate(cluster.nodes)
            if nc.connected_url and n.port == nc.connected_url.port
        )
        # The node this client uses, or the stream's leader if that is another: either
        # way the client must find a survivor, and the stream a new leader.
        victim = connected if names[connected] == leader else names.index(str(leader))
        cluster.nodes[victim].kill()
        for i in range(50, 100):
            await _publish_until_acked(js, subject, f"m-{i}")
        # Every message once: none lost by the kill, none doubled by the resends.
        info = await js.stream_info(bus.COMPUTE_STREAM)
        assert info.state.messages == 100
        assert info.cluster is not None
        assert info.cluster.leader != names[victim]
        assert nc.is_connected
        assert nc.connected_url is not None
        assert nc.connected_url.port != cluster.nodes[victim].port
        # The killed node comes back and catches up.
        cluster.restart(victim)
        cluster.wait_healthy(30, [victim])
        assert (await js.stream_info(bus.COMPUTE_STREAM)).state.messages == 100
    finally:
        await nc.close()


def _start_nodes_from_loom_nats_config(
    tmp_path: Path, secrets: Path
) -> tuple[str, list[subprocess.Popen[bytes]]]:
    """Three nodes, each run by nats-server from what `loom nats-config` printed for it."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]  # client, route, monitor
    nodes: list[subprocess.Popen[bytes]] = []
    for i, (port, route_port, monitor) in enumerate(ports):
        others = [f"127.0.0.1:{r}" for j, (_, r, _) in enumerate(ports) if j != i]
        argv = [
            "nats-config",
            f"--name=n{i}",
            f"--port={port}",
            f"--cluster-port={route_port}",
            f"--monitor-port={monitor}",
            f"--store-dir={tmp_path / f'store-{i}'}",
            f"--secrets-dir={secrets}",
            "--agent-host=h1",
            *(f"--route={o}" for o in others),
        ]
        made = subprocess.run(
            [sys.executable, "-m", "controlplane.cli", *argv],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"},
        )
        conf = tmp_path / f"n{i}.conf"
        conf.write_text(made.stdout)
        nodes.append(
            subprocess.Popen(
                [find_nats_server(), "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return ",".join(f"nats://127.0.0.1:{p}" for p, _, _ in ports), nodes


async def test_loom_nats_config_writes_nodes_that_form_a_cluster_loom_s_users_can_use(
    tmp_path: Path,
) -> None:
    secrets = tmp_path / "secrets"
    url, nodes = await asyncio.to_thread(_start_nodes_from_loom_nats_config, tmp_path, secrets)
    try:
        cfg = NatsConfig(
            url=url,
            stream_replicas=3,
            user="conductor",
            password=(secrets / "conductor").read_text().strip(),
        )
        # Straight away, as processes started with the cluster do: it may have no leader yet.
        nc = await bus.connect(url, cfg, "test-made-config")
        try:
            js = nc.jetstream()
            await bus.ensure_streams(js, cfg)
            info = await js.stream_info(bus.COMPUTE_STREAM)
            assert info.cluster is not None
            assert len(info.cluster.replicas or []) == 2
        finally:
            await nc.close()
        assert (secrets / "route").stat().st_mode & 0o077 == 0
    finally:
        for node in nodes:
            node.kill()
            node.wait()


def test_loom_nats_config_refuses_a_route_that_is_not_host_port(tmp_path: Path) -> None:
    made = subprocess.run(
        [
            *(sys.executable, "-m", "controlplane.cli", "nats-config", "--name=n0"),
            *(f"--store-dir={tmp_path}", f"--secrets-dir={tmp_path / 's'}", "--route=nohost"),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}"},
    )
    assert made.returncode == 2
    assert "--route 'nohost' is not HOST:PORT" in made.stderr
