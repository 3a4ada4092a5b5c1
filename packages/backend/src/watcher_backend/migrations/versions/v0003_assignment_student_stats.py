"""Per (assignment, student) snapshot totals, kept by triggers on ``snapshots``.

The class-wide aggregate (compat ``GET /api/assignment/...``) needs, per student, the
number of snapshots, their total size and the latest time. Scanning every snapshot for
that costs ~15 ms per 100k rows on every request; these totals are maintained inside the
same transaction as each snapshot insert (or delete/update), so they are never stale and
need no change in any code path that writes snapshots. Existing rows are backfilled.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO assignment_student_stats (assignment_id, student_pk, snapshots, size_sum, last_ts_us)
SELECT assignment_id, student_pk, count(*), sum(size), max(ts_us)
FROM snapshots GROUP BY assignment_id, student_pk
"""

# Recomputing the latest time after a delete is one probe of the (assignment, student, ts)
# index; rows whose count reaches 0 are removed so "a row" means "has snapshots".
_SQLITE_OLD = """
    UPDATE assignment_student_stats
    SET snapshots = snapshots - 1,
        size_sum = size_sum - OLD.size,
        last_ts_us = coalesce((SELECT max(ts_us) FROM snapshots
                               WHERE assignment_id = OLD.assignment_id
                                 AND student_pk = OLD.student_pk), 0)
    WHERE assignment_id = OLD.assignment_id AND student_pk = OLD.student_pk;
    DELETE FROM assignment_student_stats
    WHERE assignment_id = OLD.assignment_id AND student_pk = OLD.student_pk
      AND snapshots <= 0;
"""
_SQLITE_NEW = """
    INSERT INTO assignment_student_stats
        (assignment_id, student_pk, snapshots, size_sum, last_ts_us)
    VALUES (NEW.assignment_id, NEW.student_pk, 1, NEW.size, NEW.ts_us)
    ON CONFLICT (assignment_id, student_pk) DO UPDATE SET
        snapshots = snapshots + 1,
        size_sum = size_sum + excluded.size_sum,
        last_ts_us = max(last_ts_us, excluded.last_ts_us);
"""
_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER trg_snapshots_stats_ins AFTER INSERT ON snapshots BEGIN {_SQLITE_NEW} END",
    f"CREATE TRIGGER trg_snapshots_stats_del AFTER DELETE ON snapshots BEGIN {_SQLITE_OLD} END",
    "CREATE TRIGGER trg_snapshots_stats_upd"
    " AFTER UPDATE OF assignment_id, student_pk, size, ts_us ON snapshots"
    f" BEGIN {_SQLITE_OLD} {_SQLITE_NEW} END",
]

_PG_FUNCTION = """
CREATE FUNCTION watcher_snapshot_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE assignment_student_stats AS s
        SET snapshots = s.snapshots - 1,
            size_sum = s.size_sum - OLD.size,
            last_ts_us = coalesce((SELECT max(ts_us) FROM snapshots
                                   WHERE assignment_id = OLD.assignment_id
                                     AND student_pk = OLD.student_pk), 0)
        WHERE s.assignment_id = OLD.assignment_id AND s.student_pk = OLD.student_pk;
        DELETE FROM assignment_student_stats
        WHERE assignment_id = OLD.assignment_id AND student_pk = OLD.student_pk
          AND snapshots <= 0;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO assignment_student_stats AS s
            (assignment_id, student_pk, snapshots, size_sum, last_ts_us)
        VALUES (NEW.assignment_id, NEW.student_pk, 1, NEW.size, NEW.ts_us)
        ON CONFLICT (assignment_id, student_pk) DO UPDATE SET
            snapshots = s.snapshots + 1,
            size_sum = s.size_sum + EXCLUDED.size_sum,
            last_ts_us = greatest(s.last_ts_us, EXCLUDED.last_ts_us);
    END IF;
    RETURN NULL;
END
$$
"""
_PG_TRIGGER = """
CREATE TRIGGER trg_snapshots_stats
AFTER INSERT OR DELETE OR UPDATE OF assignment_id, student_pk, size, ts_us ON snapshots
FOR EACH ROW EXECUTE FUNCTION watcher_snapshot_stats()
"""


def upgrade() -> None:
    op.create_table(
        "assignment_student_stats",
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("snapshots", sa.BigInteger(), nullable=False),
        sa.Column("size_sum", sa.BigInteger(), nullable=False),
        sa.Column("last_ts_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"]),
        sa.ForeignKeyConstraint(["student_pk"], ["students.id"]),
        sa.PrimaryKeyConstraint("assignment_id", "student_pk"),
    )
    op.execute(_BACKFILL)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(_PG_TRIGGER)
    else:
        for ddl in _SQLITE_TRIGGERS:
            op.execute(ddl)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_snapshots_stats ON snapshots")
        op.execute("DROP FUNCTION IF EXISTS watcher_snapshot_stats()")
    else:
        for name in ("ins", "del", "upd"):
            op.execute(f"DROP TRIGGER IF EXISTS trg_snapshots_stats_{name}")
    op.drop_table("assignment_student_stats")
