"""Snapshot size percentiles from a per-(assignment, size) count table, not an index.

``ix_snapshots_asg_size`` held one entry per snapshot so that the compat aggregate could
walk sizes in order (0002). ``snapshot_size_counts`` holds one row per distinct size
of an assignment; the nearest-rank percentiles are a running sum over those rows. The
ingest writer adds one aggregated upsert per (assignment, size) per batch in the
snapshots' own transaction (as for ``assignment_student_stats`` since 0004), deletes and
updates of snapshots (maintenance) keep it by triggers, so it is never stale. One b-tree
less per stored snapshot: ~5 µs of the writer's ~38 µs per event (bench b's data,
in-process, 3,000-event commits). Existing rows are backfilled.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO snapshot_size_counts (assignment_id, size, snapshots)
SELECT assignment_id, size, count(*) FROM snapshots GROUP BY assignment_id, size
"""

# A row exists only while some snapshot of the assignment has that size.
_SQLITE_OLD = """
    UPDATE snapshot_size_counts SET snapshots = snapshots - 1
    WHERE assignment_id = OLD.assignment_id AND size = OLD.size;
    DELETE FROM snapshot_size_counts
    WHERE assignment_id = OLD.assignment_id AND size = OLD.size AND snapshots <= 0;
"""
_SQLITE_NEW = """
    INSERT INTO snapshot_size_counts (assignment_id, size, snapshots)
    VALUES (NEW.assignment_id, NEW.size, 1)
    ON CONFLICT (assignment_id, size) DO UPDATE SET snapshots = snapshots + 1;
"""
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER trg_snapshots_sizes_del AFTER DELETE ON snapshots BEGIN {_SQLITE_OLD} END",
    "CREATE TRIGGER trg_snapshots_sizes_upd AFTER UPDATE OF assignment_id, size ON snapshots"
    f" BEGIN {_SQLITE_OLD} {_SQLITE_NEW} END",
]

_PG_FUNCTION = """
CREATE FUNCTION watcher_snapshot_sizes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE snapshot_size_counts AS c SET snapshots = c.snapshots - 1
    WHERE c.assignment_id = OLD.assignment_id AND c.size = OLD.size;
    DELETE FROM snapshot_size_counts
    WHERE assignment_id = OLD.assignment_id AND size = OLD.size AND snapshots <= 0;
    IF TG_OP = 'UPDATE' THEN
        INSERT INTO snapshot_size_counts AS c (assignment_id, size, snapshots)
        VALUES (NEW.assignment_id, NEW.size, 1)
        ON CONFLICT (assignment_id, size) DO UPDATE SET snapshots = c.snapshots + 1;
    END IF;
    RETURN NULL;
END
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER trg_snapshots_sizes
AFTER DELETE OR UPDATE OF assignment_id, size ON snapshots
FOR EACH ROW EXECUTE FUNCTION watcher_snapshot_sizes()
"""


def upgrade() -> None:
    op.create_table(
        "snapshot_size_counts",
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("snapshots", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"]),
        sa.PrimaryKeyConstraint("assignment_id", "size"),
        sqlite_with_rowid=False,
    )
    op.execute(_BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for ddl in _SQLITE_TRIGGERS:
            op.execute(ddl)
    op.drop_index("ix_snapshots_asg_size", table_name="snapshots")


def downgrade() -> None:
    op.create_index("ix_snapshots_asg_size", "snapshots", ["assignment_id", "size"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_snapshots_sizes ON snapshots")
        op.execute("DROP FUNCTION IF EXISTS watcher_snapshot_sizes()")
    else:
        for name in ("del", "upd"):
            op.execute(f"DROP TRIGGER IF EXISTS trg_snapshots_sizes_{name}")
    op.drop_table("snapshot_size_counts")
