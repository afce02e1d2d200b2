"""servers get ports: the networks an instance asked for and its ports' addresses; each
network's VXLAN segment; the network each project got from "auto"

Revision ID: 0014
Revises: 0010
Create Date: 2026-12-07 03:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("requested_networks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("network_info", sa.JSON(), nullable=True))
    with op.batch_alter_table("networks") as batch:
        batch.add_column(sa.Column("segmentation_id", sa.Integer(), nullable=True))
        batch.create_unique_constraint("uq_networks_segmentation_id", ["segmentation_id"])
    op.create_table(
        "auto_allocated_networks",
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("network_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["network_id"],
            ["networks.id"],
            name=op.f("fk_auto_allocated_networks_network_id_networks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_auto_allocated_networks")),
    )


def downgrade() -> None:
    op.drop_table("auto_allocated_networks")
    with op.batch_alter_table("networks") as batch:
        batch.drop_constraint("uq_networks_segmentation_id", type_="unique")
        batch.drop_column("segmentation_id")
    with op.batch_alter_table("instances") as batch:
        batch.drop_column("network_info")
        batch.drop_column("requested_networks")
