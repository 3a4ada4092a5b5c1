"""Snapshot index for the student timeline: ``id`` joins (assignment, student, ts).

The timeline pages a student's saves by (ts_us, id). Since 0002 the per-student index
was (assignment_id, student_pk, ts_us, size): its order no longer matches (ts_us, id),
so SQLite walked ``ix_snapshots_asg_ts`` through the whole assignment's saves, skipping
other students' rows (76 ms CPU for the first 200 of 2,000 saves at 300 students, ~1 ms
with this index). ``size`` stays last, so every index-only read of the old index (per-
student means and latest times) still is one; the index count does not grow (ingest).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_snapshots_asg_student_ts_size", table_name="snapshots")
    op.create_index(
        "ix_snapshots_asg_student_ts_id_size",
        "snapshots",
        ["assignment_id", "student_pk", "ts_us", "id", "size"],
    )


def downgrade() -> None:
    op.drop_index("ix_snapshots_asg_student_ts_id_size", table_name="snapshots")
    op.create_index(
        "ix_snapshots_asg_student_ts_size",
        "snapshots",
        ["assignment_id", "student_pk", "ts_us", "size"],
    )
