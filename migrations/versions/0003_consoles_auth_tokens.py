"""consoles: console_auth_tokens

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 13:00:00

Chained from 0002; when 0003 (resilience) lands, the integrator re-chains this onto it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_auth_tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("instance_uuid", sa.String(length=36), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("protocol", sa.String(length=32), nullable=False),
        sa.Column("console_type", sa.String(length=32), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_auth_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_console_auth_tokens_token_hash")),
    )
    with op.batch_alter_table("console_auth_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_console_auth_tokens_instance_uuid"), ["instance_uuid"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_console_auth_tokens_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("console_auth_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_auth_tokens_expires_at"))
        batch_op.drop_index(batch_op.f("ix_console_auth_tokens_instance_uuid"))
    op.drop_table("console_auth_tokens")
