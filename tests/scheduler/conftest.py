"""Fixtures shared by the scheduler's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from controlplane.db.engine import make_engine


@pytest.fixture
async def engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh, migrated PostgreSQL database."""
    eng = make_engine(pg_url)
    try:
        yield eng
    finally:
        await eng.dispose()
