"""A service started while PostgreSQL is down waits for it instead of exiting; a wrong
configuration still fails at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from controlplane.db import migrate
from controlplane.db.engine import make_engine
from controlplane.db.outage import wait_until_reachable
from tests.support import polling
from tests.support.private_postgres import PrivatePostgres
from tests.support.stack import Stack


@pytest.fixture
def stopped_pg() -> Iterator[PrivatePostgres]:
    """A private cluster with database `loom_wait`, stopped."""
    pg = PrivatePostgres()
    try:
        pg.init()
        pg.start()
        pg.create_database("loom_wait")
        pg.stop()
        yield pg
    finally:
        pg.destroy()


async def test_start_waits_while_the_database_is_down_and_returns_once_it_is_up(
    stopped_pg: PrivatePostgres,
) -> None:
    engine = make_engine(stopped_pg.url("loom_wait"))
    try:
        waiting = asyncio.create_task(wait_until_reachable(engine, asyncio.Event(), "test"))
        await asyncio.sleep(2.0)
        assert not waiting.done()  # several attempts refused, none raised
        await asyncio.to_thread(stopped_pg.start)
        assert await asyncio.wait_for(waiting, 15.0) is True
    finally:
        await engine.dispose()


async def test_stopping_a_service_that_waits_for_the_database_ends_the_wait(
    stopped_pg: PrivatePostgres,
) -> None:
    engine = make_engine(stopped_pg.url("loom_wait"))
    stop = asyncio.Event()
    try:
        waiting = asyncio.create_task(wait_until_reachable(engine, stop, "test"))
        await asyncio.sleep(1.0)
        stop.set()
        assert await asyncio.wait_for(waiting, 2.0) is False
    finally:
        await engine.dispose()


async def test_a_database_that_does_not_exist_fails_at_once_instead_of_waiting(
    stopped_pg: PrivatePostgres,
) -> None:
    await asyncio.to_thread(stopped_pg.start)
    engine = make_engine(stopped_pg.url("no_such_database"))
    try:
        with pytest.raises(OperationalError, match="does not exist"):
            await asyncio.wait_for(wait_until_reachable(engine, asyncio.Event(), "test"), 5.0)
    finally:
        await engine.dispose()


def test_a_scheduler_started_while_the_database_is_down_serves_once_it_is_up(
    stopped_pg: PrivatePostgres, nats_url: str, tmp_path: Path
) -> None:
    # Found by chaos scenario R1: a scheduler restarted during a PostgreSQL restart exited.
    stack = Stack(db_url="", nats_url=nats_url, data_dir=tmp_path)
    url = stopped_pg.url("loom_wait")
    stopped_pg.start()
    migrate.upgrade(url)
    stopped_pg.stop()
    stack.db_url = url
    try:
        scheduler = stack.start("scheduler", wait=False)
        # Until it has found the database away twice, or has exited.
        polling.wait_until(
            lambda: not scheduler.alive() or scheduler.log_tail().count("unreachable") >= 2,
            polling.SERVICE_READY_S,
            "the scheduler waiting for the database, or gone",
        )
        assert scheduler.alive(), scheduler.log_tail()
        stopped_pg.start()
        stack.wait_ready("scheduler")
        assert stack.grpc_healthy(stack.scheduler_target)
    finally:
        stack.stop_all()
