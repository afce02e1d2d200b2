"""Chaos scenarios: Loom as separate processes on a PostgreSQL and a nats-server of the
test's own, faults injected while it works, figures reported.

Every scenario runs in the ordinary suite at a small size, so that it must pass on every
change; `make chaos` runs them at full size (LOOM_CHAOS_SCALE=full) and writes each
scenario's figures to the JSON file LOOM_CHAOS_REPORT names (docs/reliability.md has a
table of them). Timing bounds are the scenarios' pass criteria, as the issue states them,
never a benchmark."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.db import migrate
from controlplane.runtime.natsserver import NatsCluster, start_nats_cluster, start_nats_server
from tests.support.nats import RestartableNats
from tests.support.private_postgres import PrivatePostgres
from tests.support.stack import Stack

FULL = os.environ.get("LOOM_CHAOS_SCALE", "") == "full"


def scale(small: int, full: int) -> int:
    return full if FULL else small


class Report:
    """Each scenario's figures, written as one JSON document at the end of the session."""

    def __init__(self) -> None:
        self.scenarios: dict[str, dict[str, Any]] = {}

    def add(self, scenario: str, figures: dict[str, Any]) -> None:
        self.scenarios[scenario] = {"scale": "full" if FULL else "small", **figures}


@pytest.fixture(scope="session")
def chaos_report() -> Iterator[Report]:
    report = Report()
    yield report
    target = os.environ.get("LOOM_CHAOS_REPORT")
    if target and report.scenarios:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(report.scenarios, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.fixture
def chaos_stack(private_pg: PrivatePostgres, tmp_path: Path) -> Iterator[Stack]:
    """Every service as a process of its own over the private PostgreSQL (services are
    started by the scenario)."""
    url = private_pg.create_database("loom_chaos")
    migrate.upgrade(url)
    nats = RestartableNats(start_nats_server(tmp_path / "nats"))
    stack = Stack(
        db_url=url,
        nats_url=nats.url,
        data_dir=tmp_path / "loom",
        extra_env={"LOOM_AGENT__HEARTBEAT_INTERVAL": "1"},
    )
    try:
        yield stack
    finally:
        stack.stop_all()
        nats.process.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three nats-server nodes in one JetStream cluster, routes authenticated."""
    cluster = start_nats_cluster(tmp_path / "nats-cluster", 3, route_password="chaos-routes")
    try:
        yield cluster
    finally:
        cluster.stop()
