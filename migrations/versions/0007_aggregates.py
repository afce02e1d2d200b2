"""scheduler: host aggregates (zones become aggregate metadata), forced_down, host ratios

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00

Every host that had a zone in resource_providers.availability_zone joins an aggregate of
that name whose availability_zone metadata is the zone; the column stays, as the value
derived from the host's aggregates.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "aggregates",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aggregates")),
        sa.UniqueConstraint("name", name=op.f("uq_aggregates_name")),
        sa.UniqueConstraint("uuid", name=op.f("uq_aggregates_uuid")),
    )
    op.create_table(
        "aggregate_hosts",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("aggregate_id", BigId, nullable=False),
        sa.Column("provider_id", BigId, nullable=False),
        sa.ForeignKeyConstraint(
            ["aggregate_id"],
            ["aggregates.id"],
            name=op.f("fk_aggregate_hosts_aggregate_id_aggregates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"],
            ["resource_providers.id"],
            name=op.f("fk_aggregate_hosts_provider_id_resource_providers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aggregate_hosts")),
        sa.UniqueConstraint("aggregate_id", "provider_id", name="uq_aggregate_hosts_member"),
    )
    with op.batch_alter_table("aggregate_hosts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aggregate_hosts_aggregate_id"), ["aggregate_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_aggregate_hosts_provider_id"), ["provider_id"], unique=False
        )
    op.create_table(
        "aggregate_metadata",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("aggregate_id", BigId, nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["aggregate_id"],
            ["aggregates.id"],
            name=op.f("fk_aggregate_metadata_aggregate_id_aggregates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_aggregate_metadata")),
        sa.UniqueConstraint("aggregate_id", "key", name="uq_aggregate_metadata_key"),
    )
    with op.batch_alter_table("aggregate_metadata", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_aggregate_metadata_aggregate_id"), ["aggregate_id"], unique=False
        )
    with op.batch_alter_table("resource_providers", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("forced_down", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("vcpu_host_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("memory_mb_host_ratio", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("disk_gb_host_ratio", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "aggregate_metadata", sa.JSON(), server_default=sa.text("'{}'"), nullable=False
            )
        )
    _zones_to_aggregates()


def _zones_to_aggregates() -> None:
    conn = op.get_bind()
    rp = sa.table(
        "resource_providers",
        sa.column("id", sa.BigInteger()),
        sa.column("availability_zone", sa.String()),
        sa.column("aggregate_metadata", sa.JSON()),
    )
    agg = sa.table(
        "aggregates",
        sa.column("id", sa.BigInteger()),
        sa.column("uuid", sa.String()),
        sa.column("name", sa.String()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    hosts = sa.table(
        "aggregate_hosts",
        sa.column("aggregate_id", sa.BigInteger()),
        sa.column("provider_id", sa.BigInteger()),
    )
    meta = sa.table(
        "aggregate_metadata",
        sa.column("aggregate_id", sa.BigInteger()),
        sa.column("key", sa.String()),
        sa.column("value", sa.String()),
    )
    rows = conn.execute(
        sa.select(rp.c.id, rp.c.availability_zone).where(rp.c.availability_zone.is_not(None))
    ).all()
    by_zone: dict[str, list[int]] = {}
    for provider_id, zone in rows:
        by_zone.setdefault(zone, []).append(provider_id)
    now = datetime.now(UTC)
    for zone, members in sorted(by_zone.items()):
        conn.execute(agg.insert().values(uuid=str(uuid.uuid4()), name=zone, created_at=now))
        agg_id = conn.execute(sa.select(agg.c.id).where(agg.c.name == zone)).scalar_one()
        conn.execute(meta.insert().values(aggregate_id=agg_id, key="availability_zone", value=zone))
        for provider_id in members:
            conn.execute(hosts.insert().values(aggregate_id=agg_id, provider_id=provider_id))
            conn.execute(
                rp.update()
                .where(rp.c.id == provider_id)
                .values(aggregate_metadata={"availability_zone": [zone]})
            )


def downgrade() -> None:
    with op.batch_alter_table("resource_providers", schema=None) as batch_op:
        batch_op.drop_column("aggregate_metadata")
        batch_op.drop_column("disk_gb_host_ratio")
        batch_op.drop_column("memory_mb_host_ratio")
        batch_op.drop_column("vcpu_host_ratio")
        batch_op.drop_column("forced_down")
    with op.batch_alter_table("aggregate_metadata", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aggregate_metadata_aggregate_id"))
    op.drop_table("aggregate_metadata")
    with op.batch_alter_table("aggregate_hosts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_aggregate_hosts_provider_id"))
        batch_op.drop_index(batch_op.f("ix_aggregate_hosts_aggregate_id"))
    op.drop_table("aggregate_hosts")
    op.drop_table("aggregates")
