"""a port's allowed address pairs

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 13:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("ports") as batch:
        batch.add_column(
            sa.Column("allowed_address_pairs", sa.JSON(), nullable=False, server_default="[]")
        )


def downgrade() -> None:
    with op.batch_alter_table("ports") as batch:
        batch.drop_column("allowed_address_pairs")
