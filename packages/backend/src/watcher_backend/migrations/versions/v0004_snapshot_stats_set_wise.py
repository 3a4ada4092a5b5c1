"""Snapshot inserts update ``assignment_student_stats`` set-wise from the writer.

Migration 0003 kept the per-(assignment, student) totals with a row trigger on every
snapshot INSERT. The group-commit writer inserts snapshots ~1,000 at a time, and that
row trigger was its most expensive part (~15 µs per snapshot on SQLite, ~110 µs inside a
savepoint). The writer now adds one aggregated upsert per (assignment, student) per
batch (``store.INS_STATS``), in the same transaction as the snapshots, so the totals stay
exact; the store is the only code that inserts snapshots. Deletes and updates of
snapshots (rare: maintenance) keep their triggers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PG_TRIGGER = """
CREATE TRIGGER trg_snapshots_stats
AFTER {events} ON snapshots
FOR EACH ROW EXECUTE FUNCTION watcher_snapshot_stats()
"""
_UPDATE_OF = "UPDATE OF assignment_id, student_pk, size, ts_us"

_SQLITE_INSERT_TRIGGER = """
CREATE TRIGGER trg_snapshots_stats_ins AFTER INSERT ON snapshots BEGIN
    INSERT INTO assignment_student_stats
        (assignment_id, student_pk, snapshots, size_sum, last_ts_us)
    VALUES (NEW.assignment_id, NEW.student_pk, 1, NEW.size, NEW.ts_us)
    ON CONFLICT (assignment_id, student_pk) DO UPDATE SET
        snapshots = snapshots + 1,
        size_sum = size_sum + excluded.size_sum,
        last_ts_us = max(last_ts_us, excluded.last_ts_us);
END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_snapshots_stats ON snapshots")
        op.execute(_PG_TRIGGER.format(events=f"DELETE OR {_UPDATE_OF}"))
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_snapshots_stats_ins")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_snapshots_stats ON snapshots")
        op.execute(_PG_TRIGGER.format(events=f"INSERT OR DELETE OR {_UPDATE_OF}"))
    else:
        op.execute(_SQLITE_INSERT_TRIGGER)
