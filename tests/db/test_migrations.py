"""The Alembic chain and the models describe the same schema, on PostgreSQL and SQLite."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect

from controlplane.config import sync_database_url
from controlplane.db import migrate
from controlplane.db.models import Base


def _diff(url: str) -> list[object]:
    engine = create_engine(sync_database_url(url))
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def test_the_chain_has_exactly_one_head() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def test_migrations_match_the_models_on_postgresql(pg_url: str) -> None:
    assert _diff(pg_url) == []


def test_migrations_match_the_models_on_sqlite(sqlite_url: str) -> None:
    assert _diff(sqlite_url) == []


def test_upgrade_is_idempotent_and_creates_every_model_table(sqlite_url: str) -> None:
    migrate.upgrade(sqlite_url)
    engine = create_engine(sync_database_url(sqlite_url))
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert migrate.current(sqlite_url) is not None


def test_capacity_check_constraint_refuses_over_commit_on_postgresql(pg_url: str) -> None:
    import pytest
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    engine = create_engine(sync_database_url(pg_url))
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO resource_providers (uuid, name, vcpu_total, vcpu_reserved,"
                    " vcpu_ratio, vcpu_used, memory_mb_total, memory_mb_reserved,"
                    " memory_mb_ratio, memory_mb_used, disk_gb_total, disk_gb_reserved,"
                    " disk_gb_ratio, disk_gb_used, allocation_count, enabled, hypervisor_type,"
                    " hypervisor_version, compute_endpoint, host_ip, cpu_info, generation,"
                    " created_at) VALUES ('u1', 'h1', 2, 0, 1.0, 0, 1024, 0, 1.0, 0, 10, 0,"
                    " 1.0, 0, 0, true, '', 0, '', '', '', 0, now())"
                )
            )
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("UPDATE resource_providers SET vcpu_used = 3 WHERE name = 'h1'"))
    finally:
        engine.dispose()
