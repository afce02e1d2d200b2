"""Loom's services as separate processes, for whole-stack tests and benchmarks.

Each service runs as `python -m controlplane.cli <service>` with LOOM_* variables pointing
it at the test's own database and nats-server; `kill()` ends one abruptly, as a crash would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.runtime.natsserver import free_port
from tests.support import polling

ROOT = Path(__file__).resolve().parents[2]


class StackError(RuntimeError):
    """A service did not come up; the message carries the tail of its log."""


@dataclass
class Service:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    ready_lines_seen: int = 0
    # Settings of this service alone (LOOM_* variables), over the stack's.
    env: dict[str, str] = field(default_factory=dict)
    # Where it serves /metrics: a port of its own, kept across restarts.
    metrics_port: int = field(default_factory=free_port)
    # Run in its process before it starts (e.g. entering a cgroup), at every (re)start.
    preexec: Callable[[], None] | None = None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def count_ready_lines(self) -> int:
        if not self.log_path.exists():
            return 0
        count = 0
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                if json.loads(line).get("msg") == "ready":
                    count += 1
            except ValueError:
                continue
        return count


@dataclass
class Stack:
    """A running set of Loom services sharing one database and one nats-server."""

    db_url: str
    nats_url: str
    data_dir: Path
    conductor_port: int = field(default_factory=free_port)
    scheduler_port: int = field(default_factory=free_port)
    gateway_port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)

    @property
    def conductor_target(self) -> str:
        return f"127.0.0.1:{self.conductor_port}"

    @property
    def scheduler_target(self) -> str:
        return f"127.0.0.1:{self.scheduler_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def image_token_file(self) -> Path:
        return self.data_dir / "agent" / "image-token"

    def agent_image_env(self) -> dict[str, str]:
        """An agent's settings to reach the Image API through this stack's gateway, as
        `loom up` gives its agent (snapshots and shelves upload there). The token is read
        from `image_token_file` at every request: write it with `write_image_token`."""
        return {
            "LOOM_AGENT__IMAGE_URL": f"{self.gateway_url}/image",
            "LOOM_AGENT__IMAGE_TOKEN_FILE": str(self.image_token_file),
        }

    def write_image_token(self, token: str) -> None:
        """The token agents started with `agent_image_env` send to the Image API (in
        place of `loom up`'s service user's, e.g. the admin's from clouds.yaml)."""
        self.image_token_file.parent.mkdir(parents=True, exist_ok=True)
        self.image_token_file.write_text(token + "\n")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
        env.update(
            {
                "PYTHONPATH": f"{ROOT}:{ROOT / 'generated'}",
                "LOOM_DATA_DIR": str(self.data_dir),
                "LOOM_DATABASE__URL": self.db_url,
                "LOOM_NATS__URL": self.nats_url,
                "LOOM_CONDUCTOR__LISTEN": self.conductor_target,
                "LOOM_SCHEDULER__LISTEN": self.scheduler_target,
                "LOOM_GATEWAY__PORT": str(self.gateway_port),
                "LOOM_LOGGING__FORMAT": "json",
            }
        )
        env.update(self.extra_env)
        return env

    def start(
        self,
        name: str,
        *args: str,
        wait: bool = True,
        timeout: float = polling.SERVICE_READY_S,
        env: dict[str, str] | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> Service:
        """Starts (or restarts) a service and, with wait, returns once it logged "ready".
        env holds settings of this service alone, and preexec runs in its process before it
        starts (both kept for its restarts)."""
        service_cmd = name.split("#", 1)[0]
        svc = self.services.get(name)
        if svc is None:
            svc = Service(
                name=name,
                argv=[sys.executable, "-m", "controlplane.cli", service_cmd, *args],
                log_path=self.data_dir / f"{name.replace('#', '-')}.log",
                env=dict(env or {}),
                preexec=preexec,
            )
            svc.env.setdefault(
                f"LOOM_METRICS__LISTEN__{service_cmd.upper()}", f"127.0.0.1:{svc.metrics_port}"
            )
            self.services[name] = svc
        if svc.alive():
            return svc
        svc.ready_lines_seen = svc.count_ready_lines()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(svc.log_path, "ab") as log:
            svc.process = subprocess.Popen(
                svc.argv,
                env=self.env() | svc.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=svc.preexec,
            )
        if wait:
            self.wait_ready(name, timeout)
        return svc

    def wait_ready(self, name: str, timeout: float = polling.SERVICE_READY_S) -> None:
        svc = self.services[name]

        def ready() -> bool:
            if not svc.alive():
                raise StackError(f"{name} exited early:\n{svc.log_tail()}")
            return svc.count_ready_lines() > svc.ready_lines_seen

        try:
            polling.wait_until(ready, timeout, f"{name} ready")
        except AssertionError as exc:
            raise StackError(f"{exc}:\n{svc.log_tail()}") from exc
        svc.ready_lines_seen = svc.count_ready_lines()

    def stop(self, name: str, timeout: float = 20.0) -> None:
        svc = self.services.get(name)
        if svc is None or not svc.alive():
            return
        assert svc.process is not None
        svc.process.send_signal(signal.SIGTERM)
        try:
            svc.process.wait(timeout)
        except subprocess.TimeoutExpired:
            svc.process.kill()
            svc.process.wait()

    def kill(self, name: str) -> None:
        """Ends a service with SIGKILL: no cleanup, as a crash."""
        svc = self.services.get(name)
        if svc is not None and svc.alive():
            assert svc.process is not None
            svc.process.kill()
            svc.process.wait()

    def stop_all(self) -> None:
        for name in reversed(list(self.services)):
            self.stop(name)

    def grpc_healthy(self, target: str) -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=1.0
                )
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


@contextmanager
def running_stack(db_url: str, nats_url: str, data_dir: Path, **env: str) -> Iterator[Stack]:
    stack = Stack(db_url=db_url, nats_url=nats_url, data_dir=data_dir, extra_env=dict(env))
    try:
        yield stack
    finally:
        stack.stop_all()
