"""A real PostgreSQL for the tests: started when absent, one database per session,
cloned from a migrated template per test that asks for a fresh one.

LOOM_TEST_PG_ADMIN_URL points the tests at a server that already runs
(default postgresql://postgres@127.0.0.1:5432/postgres).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.support import polling

ADMIN_URL = os.environ.get(
    "LOOM_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _reachable() -> bool:
    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def ensure_postgres_running() -> None:
    """Starts Debian's cluster if nothing answers; fails with a clear message otherwise."""
    if _reachable():
        return
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "start"],
            check=False,
            capture_output=True,
        )
    try:
        polling.wait_until(_reachable, polling.SERVICE_READY_S, "PostgreSQL accepting connections")
    except AssertionError as exc:
        raise RuntimeError(
            f"PostgreSQL is not reachable at {ADMIN_URL} and could not be started: {exc}"
        ) from exc


def url_for(dbname: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{dbname}"


def create_database(template: str | None = None, prefix: str = "loom_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        if template:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def temporary_database(template: str | None = None) -> Iterator[str]:
    """Yields the URL of a new database; drops it afterwards."""
    name = create_database(template)
    try:
        yield url_for(name)
    finally:
        drop_database(name)
