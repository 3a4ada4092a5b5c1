"""The Alembic migrations create exactly ``db.models`` (no autogenerate diff), on both DBs."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from watcher_backend.db.engine import alembic_config, make_engine, migrate
from watcher_backend.db.models import Base


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, db_url: str) -> str:
    """``db_url`` is pre-migrated on PostgreSQL (template); use a blank database there."""
    if db_url.startswith("postgresql"):
        pg = request.getfixturevalue("pg_server")
        name = pg.new_database(migrated=False)
        request.addfinalizer(lambda: pg.drop_database(name))
        return str(pg.url(name))
    return db_url


def test_migrated_schema_equals_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert inspect(engine).get_table_names() == []
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
            assert diff == [], diff
            head = ScriptDirectory.from_config(alembic_config()).get_current_head()
            assert ctx.get_current_revision() == head
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {
            "alembic_version"
        }
    finally:
        engine.dispose()


def test_sqlite_pragmas(tmp_path: object) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/sub/dir/w.db")  # parent dirs are created
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    engine.dispose()


def test_postgres_url_gets_psycopg_driver() -> None:
    from watcher_backend.db.engine import normalize_url

    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"
