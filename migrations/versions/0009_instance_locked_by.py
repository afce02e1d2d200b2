"""conductor: instances.locked_by (who holds a server's lock: owner or admin) and
instances.shelved_at (when it was shelved, for the offload timer)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 00:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("locked_by", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("shelved_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("shelved_at")
        batch_op.drop_column("locked_by")
