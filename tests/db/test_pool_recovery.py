"""Pooled connections without a pre-ping (database.pool_pre_ping = false, the default)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from controlplane.db.engine import make_engine


async def test_after_the_server_drops_every_connection_at_most_one_statement_fails(
    pg_url: str,
) -> None:
    engine = make_engine(pg_url, pool_size=3)
    killer = make_engine(pg_url, pool_size=1)
    try:

        async def one(hold: asyncio.Barrier | None = None) -> int:
            async with engine.connect() as conn:
                if hold is not None:
                    await hold.wait()  # each holds its own until the pool has opened three
                return int((await conn.execute(text("SELECT 1"))).scalar_one())

        all_held = asyncio.Barrier(3)
        assert await asyncio.gather(one(all_held), one(all_held), one(all_held)) == [1, 1, 1]
        async with killer.connect() as conn:
            dropped = await conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
            assert dropped.scalar_one() >= 3
        invalidated: list[bool] = []
        for _ in range(2):
            try:
                assert await one() == 1
                break
            except DBAPIError as exc:
                invalidated.append(exc.connection_invalidated)
        assert invalidated in ([], [True])  # at most one failure, on a dropped connection
        # The failure retired every connection older than it: all three work again.
        assert await asyncio.gather(one(), one(), one()) == [1, 1, 1]
    finally:
        await engine.dispose()
        await killer.dispose()
