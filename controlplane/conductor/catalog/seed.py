"""Seeding the catalog at first start: roles, the admin and demo projects and users,
and Nova's default flavors, from the seed file in the data directory.

Idempotent: only what is missing is created, so every start (and every conductor
replica) can run it; nothing an operator changed afterwards is overwritten.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.conductor.catalog._rpc import new_id, now
from controlplane.conductor.catalog.passwords import hash_password_async
from controlplane.db.models import Flavor, Project, Role, RoleAssignment, User
from controlplane.seedfile import Seed, load_or_create

log = logging.getLogger("loom.conductor.catalog")


async def seed_catalog(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    """Creates what the seed names and the database lacks; returns how many rows it added."""
    added = 0
    for step in (_roles, _projects, _users, _flavors):
        try:
            added += await step(sessions, seed)
        except IntegrityError:
            # Another replica seeded the same rows at the same moment: theirs stand.
            log.info("catalog seed raced another writer", extra={"step": step.__name__})
    return added


async def _roles(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    async with sessions.begin() as s:
        have = set(await s.scalars(select(Role.name)))
        missing = [r for r in seed.roles if r not in have]
        s.add_all(Role(id=new_id(), name=r) for r in missing)
    return len(missing)


async def _projects(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    wanted = set(seed.projects) | {u.project for u in seed.users}
    async with sessions.begin() as s:
        have = set(await s.scalars(select(Project.name)))
        missing = sorted(wanted - have)
        s.add_all(
            Project(id=new_id(), name=p, domain_id="default", description="", created_at=now())
            for p in missing
        )
    return len(missing)


async def _users(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    added = 0
    for spec in seed.users:
        async with sessions.begin() as s:
            project = await s.scalar(select(Project).where(Project.name == spec.project))
            role = await s.scalar(select(Role).where(Role.name == spec.role))
            if project is None or role is None:
                log.warning("seed user names an unknown project or role", extra={"user": spec.name})
                continue
            user = await s.scalar(select(User).where(User.name == spec.name))
            if user is None:
                user = User(
                    id=new_id(),
                    name=spec.name,
                    domain_id="default",
                    password_hash=await hash_password_async(spec.password),
                    default_project_id=project.id,
                    created_at=now(),
                )
                s.add(user)
                await s.flush()
                added += 1
            granted = await s.scalar(
                select(RoleAssignment.id).where(
                    RoleAssignment.user_id == user.id,
                    RoleAssignment.project_id == project.id,
                    RoleAssignment.role_id == role.id,
                )
            )
            if granted is None:
                s.add(RoleAssignment(user_id=user.id, project_id=project.id, role_id=role.id))
                added += 1
    return added


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


class Seeder:
    """Runs the seed once per process, the first time any catalog RPC needs it.

    The conductor may call `ensure()` at start; the servicers call it too, so a
    conductor that never does still serves a seeded catalog.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], data_path: Path) -> None:
        self._sessions = sessions
        self._data_path = data_path
        self._lock = asyncio.Lock()
        self._done = False

    async def ensure(self) -> None:
        if self._done:
            return
        async with self._lock:
            if self._done:
                return
            seed = load_or_create(self._data_path)
            added = await seed_catalog(self._sessions, seed)
            if added:
                log.info("catalog seeded", extra={"rows": added})
            self._done = True
