"""catalog: flavor_projects, the projects a private flavor is shared with

Revision ID: 0012
Revises: 0009
Create Date: 2026-12-07 00:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "flavor_projects",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "flavor_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.ForeignKey("flavors.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.UniqueConstraint("flavor_id", "project_id", name="uq_flavor_projects"),
    )
    op.create_index("ix_flavor_projects_flavor_id", "flavor_projects", ["flavor_id"])
    op.create_index("ix_flavor_projects_project_id", "flavor_projects", ["project_id"])


def downgrade() -> None:
    op.drop_table("flavor_projects")
