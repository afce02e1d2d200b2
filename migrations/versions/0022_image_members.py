"""image: image_members, the projects a shared image is offered to and their answers

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 04:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "image_members",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column(
            "image_id",
            sa.String(36),
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("member_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("image_id", "member_id", name="uq_image_members_image_member"),
    )
    op.create_index("ix_image_members_image_id", "image_members", ["image_id"])
    op.create_index("ix_image_members_member_id", "image_members", ["member_id"])


def downgrade() -> None:
    op.drop_table("image_members")
