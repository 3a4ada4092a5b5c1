"""Ingest writes fewer b-tree entries per snapshot (issue #2: ≥ 20,000 events/s).

1. ``file_events`` keeps only deletes and renames. A create/modify row repeated its
   snapshot (same event, file, student, assignment, time) and no reader asks for one:
   the timeline and the ProgSnap2 export read ``op IN ('delete', 'rename')`` only. The
   existing create/modify rows are deleted (nothing reads them; ``snapshot_id`` is now
   always NULL). Saved per snapshot: a rowid b-tree insert and an index insert.
2. ``snapshots.event_id`` is no longer UNIQUE: ``events`` (primary key ``event_id``)
   already registers every stored event id once, and the store skips ids found there
   before it writes anything (a concurrent insert of the same id fails on ``events``).
3. ``events`` is WITHOUT ROWID on SQLite: its primary key is the only b-tree (a rowid
   table kept a second, ``sqlite_autoindex_events_1``, for the TEXT key).

SQLite cannot drop a constraint or change WITHOUT ROWID in place, so ``snapshots`` and
``events`` are rebuilt (create, copy, drop, rename) with their indexes and 0003's
triggers recreated from ``sqlite_master``. ``snapshots``' only child is
``file_events.snapshot_id``, all NULL after step 1, so the implicit DELETE of DROP TABLE
(foreign keys on) violates nothing. PostgreSQL drops the unique constraint by name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _snapshot_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", _BigId, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("ts_us", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("reconciled", sa.Boolean(), nullable=False),
        sa.Column("too_large", sa.Boolean(), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
    ]


_SNAPSHOT_FKS = (
    ("assignment_id", "assignments.id"),
    ("file_id", "files.id"),
    ("student_pk", "students.id"),
)


def _sqlite_rebuild(table: str, create: sa.Table) -> None:
    """Replace ``table`` by ``create`` (same columns): copy, drop, rename, and recreate
    the indexes and triggers ``sqlite_master`` held for it."""
    bind = op.get_bind()
    ddl = [
        str(r[0])
        for r in bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL ORDER BY type, name",
            (table,),
        )
    ]
    cols = ", ".join(c.name for c in create.columns)
    create.create(bind)
    op.execute(f"INSERT INTO {create.name} ({cols}) SELECT {cols} FROM {table}")  # noqa: S608
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {create.name} RENAME TO {table}")
    for sql in ddl:
        op.execute(sql)


def _events_table(md: sa.MetaData, *, with_rowid: bool) -> sa.Table:
    return sa.Table(
        "_events_new",
        md,
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
        sqlite_with_rowid=with_rowid,
    )


def _parent_tables(md: sa.MetaData) -> None:
    # parent tables must be in the MetaData for the foreign keys to compile
    for name in ("assignments", "files", "students"):
        sa.Table(name, md, sa.Column("id", sa.Integer(), primary_key=True))


def _snapshots_table(md: sa.MetaData, *, unique_event_id: bool) -> sa.Table:
    """The new ``snapshots`` for a SQLite rebuild: UNIQUE(event_id) only before 0008."""
    return sa.Table(
        "_snapshots_new",
        md,
        *_snapshot_columns(),
        *(sa.ForeignKeyConstraint([c], [ref]) for c, ref in _SNAPSHOT_FKS),
        sa.PrimaryKeyConstraint("id"),
        *([sa.UniqueConstraint("event_id")] if unique_event_id else []),
    )


def upgrade() -> None:
    bind = op.get_bind()
    op.execute("DELETE FROM file_events WHERE op IN ('create', 'modify')")
    if bind.dialect.name != "sqlite":
        insp = sa.inspect(bind)
        for uc in insp.get_unique_constraints("snapshots"):
            if uc["column_names"] == ["event_id"] and uc["name"]:
                op.drop_constraint(uc["name"], "snapshots", type_="unique")
        return
    md = sa.MetaData()
    _sqlite_rebuild("events", _events_table(md, with_rowid=False))
    _parent_tables(md)
    _sqlite_rebuild("snapshots", _snapshots_table(md, unique_event_id=False))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.create_unique_constraint("snapshots_event_id_key", "snapshots", ["event_id"])
    else:
        md = sa.MetaData()
        _sqlite_rebuild("events", _events_table(md, with_rowid=True))
        _parent_tables(md)
        _sqlite_rebuild("snapshots", _snapshots_table(md, unique_event_id=True))
    # The create/modify rows again, derived from the snapshots: 'create' for a file's
    # first snapshot or the first after a delete, else 'modify'.
    op.execute(
        "INSERT INTO file_events (event_id, file_id, student_pk, assignment_id, op, ts_us, "
        "snapshot_id, old_path, reconciled) "
        "SELECT s.event_id, s.file_id, s.student_pk, s.assignment_id, "
        "CASE WHEN NOT EXISTS (SELECT 1 FROM snapshots p WHERE p.file_id = s.file_id "
        "AND (p.ts_us < s.ts_us OR (p.ts_us = s.ts_us AND p.id < s.id)) "
        "AND NOT EXISTS (SELECT 1 FROM file_events d WHERE d.file_id = s.file_id "
        "AND d.op = 'delete' AND d.ts_us >= p.ts_us AND d.ts_us <= s.ts_us)) "
        "THEN 'create' ELSE 'modify' END, s.ts_us, s.id, NULL, s.reconciled "
        "FROM snapshots s ORDER BY s.id"
    )
