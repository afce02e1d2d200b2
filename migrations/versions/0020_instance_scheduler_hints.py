"""conductor: instances.scheduler_hints, the same_host and different_host hints a server
was created with, kept for every scheduling of it (reschedules and moves)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 21:00:00

NULL for a server created with neither hint (every server created before this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheduler_hints", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("scheduler_hints")
