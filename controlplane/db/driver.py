"""Statements sent straight to psycopg on a pooled connection, past SQLAlchemy.

For the few hottest statements only (a boot's insert, the scheduler's claim): SQLAlchemy's
execution and result layers cost more CPU than the statement itself there. Each statement
is prepared once per connection and fires the engine's before_cursor_execute event as
SQLAlchemy would, so every statement counter on the engine (the process's STATS, a test's
counter) still counts it: statements per boot stay counted, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any, cast

import psycopg
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement

_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


async def driver_of(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under a pooled SQLAlchemy connection."""
    raw = await conn.get_raw_connection()
    return cast("psycopg.AsyncConnection[Any]", raw.driver_connection)


@cache
def compiled(statement: ClauseElement) -> tuple[str, Mapping[str, Any]]:
    """A PostgreSQL statement as psycopg's SQL text and the values of its literal binds
    (to be merged under the caller's parameters). Compiled once per statement object."""
    done = statement.compile(dialect=_DIALECT)
    return str(done), dict(done.params)


async def execute(
    conn: AsyncConnection, sql: str, params: Mapping[str, Any]
) -> psycopg.AsyncCursor[Any]:
    """Runs one prepared statement on the connection's driver, counted by the engine's
    statement counters. On a session's connection (`await session.connection()`) it is
    part of the session's transaction and commits or rolls back with it."""
    sync = conn.sync_connection
    if sync is not None:
        sync.dispatch.before_cursor_execute(sync, None, sql, params, None, False)
    return await (await driver_of(conn)).execute(sql, params, prepare=True)
