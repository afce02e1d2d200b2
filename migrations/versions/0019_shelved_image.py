"""conductor: instances.shelved_image_id, the snapshot a shelve took (an offloaded server
is unshelved from it)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 20:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("shelved_image_id", sa.String(36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("shelved_image_id")
