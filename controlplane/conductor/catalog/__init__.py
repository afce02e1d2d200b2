"""The conductor's catalog: identity (projects, users, roles), flavors, images, keypairs.

`registrations()` is how the conductor's server picks up the catalog's gRPC services.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from controlplane.config import LoomConfig
from controlplane.runtime.grpcserver import Registration


def registrations(
    sessions: async_sessionmaker[AsyncSession], cfg: LoomConfig
) -> list[Registration]:
    """The catalog's servicers, ready to add to the conductor's gRPC server."""
    return []
