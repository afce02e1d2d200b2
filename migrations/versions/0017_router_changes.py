"""router and floating IP changes waiting to be sent, and the router binding revisions

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "router_changes",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("router_id", sa.String(length=36), nullable=True),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_router_changes")),
    )
    counters = sa.table(
        "network_counters", sa.column("name", sa.String), sa.column("value", sa.BigInteger)
    )
    op.bulk_insert(counters, [{"name": "router", "value": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM network_counters WHERE name = 'router'")
    op.drop_table("router_changes")
