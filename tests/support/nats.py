"""A real nats-server with JetStream per test session, on a free port.

LOOM_TEST_NATS_URL points the tests at a server that already runs instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from controlplane.runtime.natsserver import NatsServerProcess, start_nats_server


@contextmanager
def nats_server(store_dir: Path) -> Iterator[NatsServerProcess | None]:
    if os.environ.get("LOOM_TEST_NATS_URL"):
        yield None
        return
    server = start_nats_server(store_dir)
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RestartableNats:
    """A nats-server the test may kill and start again on the same port and store."""

    process: NatsServerProcess

    @property
    def url(self) -> str:
        return self.process.url

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        self.process = start_nats_server(self.process.store_dir, self.process.port)
