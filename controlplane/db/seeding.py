"""Seeding a domain's tables from the seed file in the data directory: each domain names its
steps; `Seeder` runs them once per process.

Idempotent: only what is missing is created, so every start (and every replica) can run it;
nothing an operator changed afterwards is overwritten.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.seedfile import Seed, load_or_create

log = logging.getLogger("loom.seed")

SeedStep = Callable[[async_sessionmaker[AsyncSession], Seed], Awaitable[int]]


async def run_seed_steps(
    sessions: async_sessionmaker[AsyncSession], seed: Seed, steps: Sequence[SeedStep]
) -> int:
    """Creates what the seed names and the database lacks; returns how many rows it added."""
    added = 0
    for step in steps:
        try:
            added += await step(sessions, seed)
        except IntegrityError:
            # Another replica seeded the same rows at the same moment: theirs stand.
            log.info("seed raced another writer", extra={"step": step.__name__})
    return added


class Seeder:
    """Runs a domain's seed steps once per process, the first time one of its RPCs needs
    them, so a service started on an empty database serves a seeded domain."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        data_path: Path,
        steps: Sequence[SeedStep],
    ) -> None:
        self._sessions = sessions
        self._data_path = data_path
        self._steps = tuple(steps)
        self._lock = asyncio.Lock()
        self._done = False

    async def ensure(self) -> None:
        if self._done:
            return
        async with self._lock:
            if self._done:
                return
            seed = load_or_create(self._data_path)
            added = await run_seed_steps(self._sessions, seed, self._steps)
            if added:
                names = [s.__name__ for s in self._steps]
                log.info("seeded", extra={"rows": added, "steps": names})
            self._done = True
