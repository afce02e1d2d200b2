"""Async engines for PostgreSQL (psycopg 3) and SQLite (aiosqlite), with a statement counter."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from controlplane.config import DatabaseConfig, async_database_url
from controlplane.runtime.stats import STATS


class StatementCounter:
    """Counts statements an engine executes (for benchmarks: statements per boot)."""

    def __init__(self) -> None:
        self._counter = itertools.count()
        self.count = 0

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.count = next(self._counter) + 1


def make_engine(
    url: str,
    *,
    pool_size: int = 20,
    echo: bool = False,
    pre_ping: bool = False,
    recycle_s: int = 3600,
) -> AsyncEngine:
    """An async engine whose statements count into the process's STATS."""
    engine = _make_engine(
        async_database_url(url),
        pool_size=pool_size,
        echo=echo,
        pre_ping=pre_ping,
        recycle_s=recycle_s,
    )
    event.listen(engine.sync_engine, "before_cursor_execute", STATS.count_statement)
    return engine


def engine_for(database: DatabaseConfig, url: str) -> AsyncEngine:
    """make_engine with a service's [database] settings (url: the resolved database URL)."""
    return make_engine(
        url,
        pool_size=database.pool_size,
        echo=database.echo,
        pre_ping=database.pool_pre_ping,
        recycle_s=database.pool_recycle_s,
    )


def _make_engine(
    url: str, *, pool_size: int, echo: bool, pre_ping: bool, recycle_s: int
) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            echo=echo,
            connect_args={"timeout": 30},
            # One writer at a time is SQLite's rule anyway; NullPool avoids sharing
            # connections across event loops in tests.
            poolclass=NullPool,
        )
        _sqlite_pragmas(engine.sync_engine)
        return engine
    # No overflow: under a burst, overflow connections were opened and closed again for
    # each checkout past pool_size (a PostgreSQL backend start each). The same ceiling as
    # before (10 + 10 overflow) is now kept open instead; more waiters queue for one.
    return create_async_engine(
        url,
        echo=echo,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=pre_ping,
        pool_recycle=recycle_s or -1,
    )


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()


def count_statements(engine: AsyncEngine) -> StatementCounter:
    counter = StatementCounter()
    event.listen(engine.sync_engine, "before_cursor_execute", counter)
    return counter


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)
