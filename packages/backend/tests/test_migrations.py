"""The Alembic migrations create exactly ``db.models`` (no autogenerate diff), on both DBs."""

from __future__ import annotations

import hashlib
from functools import partial
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from watcher_backend.db.engine import alembic_config, make_engine, migrate
from watcher_backend.db.models import Base


def _migrate_to(engine: Engine, rev: str, down: bool = False) -> None:
    """Upgrade (or downgrade) ``engine``'s database to revision ``rev``."""
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, rev)


@pytest.fixture
def empty_db_url(request: pytest.FixtureRequest, db_url: str) -> str:
    """``db_url`` is pre-migrated on PostgreSQL (template); use a blank database there."""
    if db_url.startswith("postgresql"):
        pg = request.getfixturevalue("pg_server")
        name = pg.new_database(migrated=False)
        request.addfinalizer(lambda: pg.drop_database(name))
        return str(pg.url(name))
    return db_url


def _for_dialect(dialect: str) -> Any:
    """Alembic's compare ignores ``ddl_if``: leave out the objects not made on ``dialect``."""

    def include(obj: Any, _name: Any, _type: str, reflected: bool, _other: Any) -> bool:
        cond = getattr(obj, "_ddl_if", None)
        return reflected or cond is None or cond.dialect in (None, dialect)

    return include


# SQLite cannot reflect expression indexes: ix_blobs_sha_prefix is checked by the 0011 and
# plan tests below instead
@pytest.mark.filterwarnings("ignore:.*expression-based index")
def test_migrated_schema_equals_models(empty_db_url: str) -> None:
    engine = make_engine(empty_db_url)
    try:
        assert inspect(engine).get_table_names() == []
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={"compare_type": True, "include_object": _for_dialect(conn.dialect.name)},
            )
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
    from sqlalchemy.exc import IntegrityError

    engine = make_engine(empty_db_url)
    try:
        _migrate_to(engine, "0007")
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
    engine = make_engine(empty_db_url)
    counts = "SELECT size, snapshots FROM snapshot_size_counts ORDER BY size"

    to = partial(_migrate_to, engine)

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


def test_0011_rebuilds_blobs_keyed_by_id_and_downgrades(empty_db_url: str) -> None:
    """0010 -> 0011 keeps every blob byte for byte, finds them through the prefix index,
    and 0011 -> 0010 brings back the sha256 primary key."""
    from watcher_backend.blobs import load_blob, pack_blob

    engine = make_engine(empty_db_url)
    contents = [b"int main(void) { return 0; }\n" * 20, b"tiny", bytes(range(256)) * 3]
    blobs = [pack_blob(hashlib.sha256(c).hexdigest(), c) for c in contents]

    to = partial(_migrate_to, engine)

    def blob_indexes() -> dict[str, bool]:
        if engine.dialect.name == "sqlite":  # the inspector skips expression indexes
            with engine.connect() as conn:
                rows = conn.exec_driver_sql("PRAGMA index_list(blobs)").all()
            return {str(r[1]): bool(r[2]) for r in rows if r[3] == "c"}  # c: CREATE INDEX
        return {str(i["name"]): bool(i["unique"]) for i in inspect(engine).get_indexes("blobs")}

    try:
        to("0010")
        with engine.begin() as conn:
            for b in blobs:
                conn.execute(
                    text(
                        "INSERT INTO blobs (sha256, size, stored_size, codec, data, created_us)"
                        " VALUES (:s, :n, :m, :c, :d, 1)"
                    ),
                    {"s": b.sha256, "n": b.size, "m": len(b.data), "c": b.codec, "d": b.data},
                )
        to("0011")
        assert inspect(engine).get_pk_constraint("blobs")["constrained_columns"] == ["id"]
        pg = engine.dialect.name == "postgresql"
        assert blob_indexes() == (
            {"ix_blobs_sha_prefix": False, "ux_blobs_sha256": True}
            if pg
            else {"ix_blobs_sha_prefix": False}
        )
        with engine.connect() as conn:
            for b, c in zip(blobs, contents, strict=True):
                assert load_blob(conn, b.sha256) == c
            ids = conn.execute(text("SELECT id FROM blobs ORDER BY id")).scalars().all()
            assert len(ids) == 3
        to("0010", down=True)
        assert inspect(engine).get_pk_constraint("blobs")["constrained_columns"] == ["sha256"]
        assert "ix_blobs_sha_prefix" not in blob_indexes()
        with engine.connect() as conn:
            got = conn.execute(text("SELECT sha256, data FROM blobs")).all()
            assert sorted(got) == sorted((b.sha256, b.data) for b in blobs)
        to("head")
        with engine.connect() as conn:
            assert [load_blob(conn, b.sha256) for b in blobs] == contents
    finally:
        engine.dispose()


def test_blob_lookups_use_the_prefix_index(tmp_path: object) -> None:
    """SQLite: every way the code finds a blob by sha256 searches ix_blobs_sha_prefix (a
    table scan per lookup would make reads O(blobs))."""
    from sqlalchemy import exists, select

    from watcher_backend.blobs import is_blob
    from watcher_backend.db.models import BlobRow, SnapshotRow
    from watcher_backend.store import BLOB_KEY_CHARS

    engine = make_engine(f"sqlite:///{tmp_path}/plan.db")
    try:
        migrate(engine)
        sha = "ab" * 32
        stmts = [
            select(BlobRow.id).where(is_blob(BlobRow.sha256, sha)),
            select(SnapshotRow.id, exists().where(is_blob(BlobRow.sha256, SnapshotRow.sha256))),
        ]
        with engine.connect() as conn:
            for stmt in stmts:
                compiled = stmt.compile(engine)  # with its bound parameters, as run
                plan = conn.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {compiled}", tuple(compiled.params.values())
                ).all()
                assert any("ix_blobs_sha_prefix" in str(r[-1]) for r in plan), plan
            # the writer's planning query (store._load_blob_sizes)
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT sha256, size FROM blobs"
                f" WHERE substr(sha256, 1, {BLOB_KEY_CHARS}) IN (?, ?)",
                (sha[:16], "cd" * 8),
            ).all()
            assert any("ix_blobs_sha_prefix" in str(r[-1]) for r in plan), plan
    finally:
        engine.dispose()
