"""Seeding identity at first start: roles, the admin and demo projects and users, from the
seed file in the data directory.

Idempotent: only what is missing is created, so every start (and every conductor
replica) can run it; nothing an operator changed afterwards is overwritten.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.db.models import Project, Role, RoleAssignment, User
from controlplane.db.seeding import SeedStep, run_seed_steps
from controlplane.identity.passwords import hash_password_async
from controlplane.runtime.rpc import new_id, now
from controlplane.seedfile import Seed

log = logging.getLogger("loom.seed")


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


IDENTITY_STEPS: tuple[SeedStep, ...] = (_roles, _projects, _users)


async def seed_identity(sessions: async_sessionmaker[AsyncSession], seed: Seed) -> int:
    """Roles, projects, users and their role assignments the seed names."""
    return await run_seed_steps(sessions, seed, IDENTITY_STEPS)
