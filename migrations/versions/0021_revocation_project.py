"""identity: token_revocations.project_id, so a role taken away on one project revokes only
the user's tokens scoped to that project

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-08 04:00:00

NULL for a revocation of all the user's tokens (every row before this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("token_revocations", schema=None) as batch_op:
        batch_op.add_column(sa.Column("project_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("token_revocations", schema=None) as batch_op:
        batch_op.drop_column("project_id")
