"""Seeding the catalog at first start: the flavors the seed file names (Nova's defaults)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Flavor
from controlplane.db.seeding import SeedStep, run_seed_steps
from controlplane.runtime.rpc import now
from controlplane.seedfile import Seed


async def _flavors(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    async with sessions.begin() as s:
        have_ids = set(await s.scalars(select(Flavor.flavorid)))
        have_names = set(await s.scalars(select(Flavor.name)))
        missing = [f for f in seed.flavors if f.id not in have_ids and f.name not in have_names]
        s.add_all(
            Flavor(
                flavorid=f.id,
                name=f.name,
                vcpus=f.vcpus,
                memory_mb=f.ram,
                root_gb=f.disk,
                ephemeral_gb=0,
                swap_mb=0,
                rxtx_factor=1.0,
                is_public=True,
                disabled=False,
                extra_specs={},
                created_at=now(),
            )
            for f in missing
        )
    return len(missing)


async def seed_flavors(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    """The flavors the seed names that the database lacks (by id or by name)."""
    return await run_seed_steps(sessions, seed, (_flavors,))


FLAVOR_STEPS: tuple[SeedStep, ...] = (_flavors,)
