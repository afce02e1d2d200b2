"""The one place that knows PostgreSQL and SQLite spell upserts differently."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def upsert_insert(session: AsyncSession, model: Any) -> postgresql.Insert:
    """An INSERT with on_conflict_do_nothing/do_update for the session's database.

    Typed as PostgreSQL's: SQLite's construct offers the same methods with the same meaning.
    """
    if session.get_bind().dialect.name == "sqlite":
        return sqlite.insert(model)  # type: ignore[return-value]
    return postgresql.insert(model)


def locks_rows(session: AsyncSession) -> bool:
    """True where SELECT ... FOR UPDATE means something (SQLite ignores it: one writer)."""
    return session.get_bind().dialect.name == "postgresql"


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime: SQLite hands timestamps back without a zone,
    and Loom stores UTC everywhere."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
