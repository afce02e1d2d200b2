"""The store's retries, against failures the PostgreSQL server itself produces.

A trigger makes the server fail the first N statements that touch allocations: it either
terminates its own backend (a connection lost mid-claim) or raises SQLSTATE 40P01 (what a
deadlock victim gets). A sequence counts the attempts, since it is not rolled back with
the failed statement.
"""

from __future__ import annotations

import logging

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.scheduler.hoststate import Resources
from controlplane.scheduler.store import (
    CLAIM_ATTEMPTS,
    RELEASE_ATTEMPTS,
    ClaimStatus,
    ProviderStore,
)
from tests.scheduler.dbcheck import add_host, assert_consistent

MB100 = Resources(vcpus=1, memory_mb=100, disk_gb=1)

FAILURES = {
    "lost connection": "PERFORM pg_terminate_backend(pg_backend_pid())",
    "deadlock": "RAISE EXCEPTION 'injected deadlock' USING ERRCODE = 'deadlock_detected'",
    "other error": "RAISE EXCEPTION 'injected failure' USING ERRCODE = 'raise_exception'",
}


async def _fail_first(engine: AsyncEngine, times: int, event: str, failure: str) -> None:
    """The next `times` statements that `event` (INSERT or DELETE) allocations fail."""
    async with engine.begin() as conn:
        await conn.execute(text("CREATE SEQUENCE injected_attempts"))
        await conn.execute(
            text(
                f"""
                CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF nextval('injected_attempts') <= {times} THEN
                        {FAILURES[failure]};
                    END IF;
                    RETURN COALESCE(NEW, OLD);
                END $$
                """
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER inject_failure BEFORE {event} ON allocations"
                " FOR EACH ROW EXECUTE FUNCTION inject_failure()"
            )
        )


async def _attempts(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT last_value FROM injected_attempts"))).one()[0])


def _warnings(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(words in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("kept_connections", [0, 2])
async def test_a_claim_whose_connection_is_lost_runs_again_on_a_new_one(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture, kept_connections: int
) -> None:
    store = ProviderStore(engine, claim_connections=kept_connections)
    try:
        host = await add_host(store, "a")
        await _fail_first(engine, CLAIM_ATTEMPTS - 1, "INSERT", "lost connection")
        result = await store.claim(host.id, "c", "p", MB100)
        assert result.status is ClaimStatus.CLAIMED
        assert await _attempts(engine) == CLAIM_ATTEMPTS
        assert _warnings(caplog, "claim connection lost") == CLAIM_ATTEMPTS - 1
        usage = await assert_consistent(engine)
        assert usage["a"].allocations == 1
    finally:
        await store.close()


async def test_a_claim_gives_up_when_every_connection_it_gets_is_lost(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a")
    await _fail_first(engine, CLAIM_ATTEMPTS, "INSERT", "lost connection")
    with pytest.raises(psycopg.OperationalError):
        await store.claim(host.id, "c", "p", MB100)
    assert await _attempts(engine) == CLAIM_ATTEMPTS
    assert _warnings(caplog, "claim connection lost") == CLAIM_ATTEMPTS - 1
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 0
    # The failure was the connection's, not the store's: the next claim goes through.
    assert (await store.claim(host.id, "c", "p", MB100)).status is ClaimStatus.CLAIMED


async def test_a_claim_that_fails_otherwise_is_not_run_again(engine: AsyncEngine) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a")
    await _fail_first(engine, 1, "INSERT", "other error")
    with pytest.raises(psycopg.errors.RaiseException):
        await store.claim(host.id, "c", "p", MB100)
    assert await _attempts(engine) == 1


async def test_a_release_that_loses_deadlocks_runs_again_and_frees_once(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a")
    assert (await store.claim(host.id, "c", "p", MB100)).status is ClaimStatus.CLAIMED
    await _fail_first(engine, RELEASE_ATTEMPTS - 1, "DELETE", "deadlock")
    result = await store.release("c")
    assert result.released
    assert result.host is not None
    assert (result.host.memory_mb.used, result.host.allocation_count) == (0, 0)
    assert await _attempts(engine) == RELEASE_ATTEMPTS
    assert _warnings(caplog, "release of c lost a deadlock") == RELEASE_ATTEMPTS - 1
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 0


async def test_a_release_gives_up_after_its_last_attempt_loses_a_deadlock(
    engine: AsyncEngine,
) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a")
    assert (await store.claim(host.id, "c", "p", MB100)).status is ClaimStatus.CLAIMED
    await _fail_first(engine, RELEASE_ATTEMPTS, "DELETE", "deadlock")
    with pytest.raises(DBAPIError) as failed:
        await store.release("c")
    assert isinstance(failed.value.orig, psycopg.errors.DeadlockDetected)
    assert await _attempts(engine) == RELEASE_ATTEMPTS
    usage = await assert_consistent(engine)
    assert usage["a"].allocations == 1  # nothing was freed, so a later release still can
    assert (await store.release("c")).released


async def test_a_release_that_fails_otherwise_is_not_run_again(engine: AsyncEngine) -> None:
    store = ProviderStore(engine)
    host = await add_host(store, "a")
    assert (await store.claim(host.id, "c", "p", MB100)).status is ClaimStatus.CLAIMED
    await _fail_first(engine, 1, "DELETE", "other error")
    with pytest.raises(DBAPIError):
        await store.release("c")
    assert await _attempts(engine) == 1
