"""security changes waiting for their hosts, and the revision counter of port bindings

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "port_security_changes",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=True),
        sa.Column("port_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_port_security_changes")),
    )
    counters = op.create_table(
        "network_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_network_counters")),
    )
    op.bulk_insert(counters, [{"name": "port_security", "value": 0}])


def downgrade() -> None:
    op.drop_table("network_counters")
    op.drop_table("port_security_changes")
