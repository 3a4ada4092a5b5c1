"""The Alembic migrations create exactly ``db.models`` (no autogenerate diff), on both DBs."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

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


def _one_student_file(conn: Connection) -> None:
    """Class 1, student 1, assignment 1 and its file 1 (``a.c``), for rows that need them."""
    x = conn.execute
    x(text("INSERT INTO classes (class_div, subject, division) VALUES ('c-1', 'c', '1')"))
    x(text("INSERT INTO students (class_id, student_id) VALUES (1, 's1')"))
    x(text("INSERT INTO assignments (class_id, name) VALUES (1, 'hw')"))
    x(
        text(
            "INSERT INTO files (student_pk, assignment_id, path, compat_name, created_us,"
            " deleted, last_sha256) VALUES (1, 1, 'a.c', 'a.c', 1, false, NULL)"
        )
    )


def test_0008_keeps_rows_indexes_and_triggers(empty_db_url: str) -> None:
    """0007 -> 0008 on a database with data: rows copied, create/modify file_events gone,
    snapshot indexes and the stats triggers still there (a DELETE still updates stats),
    ``events`` WITHOUT ROWID on SQLite and still rejecting a second copy of an id."""
    from alembic import command
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0007")
        with engine.begin() as conn:
            x = conn.execute
            _one_student_file(conn)
            for i in (1, 2):
                x(
                    text(
                        "INSERT INTO events (event_id, kind, received_us) "
                        "VALUES (:e, 'file.snapshot', 1)"
                    ),
                    {"e": f"e{i}"},
                )
                x(
                    text(
                        "INSERT INTO snapshots (id, event_id, file_id, student_pk, assignment_id,"
                        " ts_us, size, sha256, source, reconciled, too_large, node, received_us)"
                        " VALUES (:i, :e, 1, 1, 1, :i, 10, NULL, 'compat', false, false, '', 1)"
                    ),
                    {"i": i, "e": f"e{i}"},
                )
                x(
                    text(
                        "INSERT INTO file_events (event_id, file_id, student_pk, assignment_id,"
                        " op, ts_us, snapshot_id, old_path, reconciled)"
                        " VALUES (:e, 1, 1, 1, :op, :i, :i, NULL, false)"
                    ),
                    {"i": i, "e": f"e{i}", "op": "create" if i == 1 else "modify"},
                )
            x(
                text(
                    "INSERT INTO file_events (event_id, file_id, student_pk, assignment_id, op,"
                    " ts_us, snapshot_id, old_path, reconciled)"
                    " VALUES ('d', 1, 1, 1, 'delete', 3, NULL, NULL, false)"
                )
            )
            x(text("INSERT INTO assignment_student_stats VALUES (1, 1, 2, 20, 2)"))
        migrate(engine)
        insp = inspect(engine)
        assert {i["name"] for i in insp.get_indexes("snapshots")} == {
            i.name for i in Base.metadata.tables["snapshots"].indexes
        }
        with engine.begin() as conn:
            assert conn.execute(text("SELECT id, event_id FROM snapshots ORDER BY id")).all() == [
                (1, "e1"),
                (2, "e2"),
            ]
            assert conn.execute(text("SELECT event_id, op FROM file_events")).all() == [
                ("d", "delete")
            ]
            conn.execute(text("DELETE FROM snapshots WHERE id = 2"))  # the stats trigger
            assert conn.execute(
                text("SELECT snapshots, size_sum FROM assignment_student_stats")
            ).all() == [(1, 10)]
            if engine.dialect.name == "sqlite":
                sql = conn.execute(
                    text("SELECT sql FROM sqlite_master WHERE name = 'events'")
                ).scalar_one()
                assert "WITHOUT ROWID" in sql
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO events VALUES ('e1', 'file.snapshot', 2)"))
    finally:
        engine.dispose()


def test_0010_backfills_size_counts_and_downgrades(empty_db_url: str) -> None:
    """0009 -> 0010 on a database with snapshots: the per-size counts are backfilled, a
    DELETE and an UPDATE keep them (triggers), and 0010 -> 0009 brings the index back."""
    from alembic import command

    engine = make_engine(empty_db_url)
    counts = "SELECT size, snapshots FROM snapshot_size_counts ORDER BY size"

    def to(rev: str, down: bool = False) -> None:
        with engine.begin() as conn:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, rev)

    try:
        to("0009")
        with engine.begin() as conn:
            x = conn.execute
            _one_student_file(conn)
            for i, size in enumerate((10, 10, 30), start=1):
                x(
                    text(
                        "INSERT INTO snapshots (id, event_id, file_id, student_pk, assignment_id,"
                        " ts_us, size, sha256, source, reconciled, too_large, node, received_us)"
                        " VALUES (:i, :e, 1, 1, 1, :i, :s, NULL, 'compat', false, false, '', 1)"
                    ),
                    {"i": i, "e": f"e{i}", "s": size},
                )
        to("0010")
        with engine.begin() as conn:
            assert conn.execute(text(counts)).all() == [(10, 2), (30, 1)]
            conn.execute(text("DELETE FROM snapshots WHERE id = 3"))
            conn.execute(text("UPDATE snapshots SET size = 20 WHERE id = 1"))
            assert conn.execute(text(counts)).all() == [(10, 1), (20, 1)]
        assert "ix_snapshots_asg_size" not in {
            i["name"] for i in inspect(engine).get_indexes("snapshots")
        }
        to("0009", down=True)
        assert "snapshot_size_counts" not in inspect(engine).get_table_names()
        assert "ix_snapshots_asg_size" in {
            i["name"] for i in inspect(engine).get_indexes("snapshots")
        }
        with engine.begin() as conn:  # no trigger left behind on snapshots
            conn.execute(text("DELETE FROM snapshots WHERE id = 2"))
        to("head")
        with engine.connect() as conn:
            assert conn.execute(text(counts)).all() == [(20, 1)]
    finally:
        engine.dispose()
