"""Snapshot size indexes for the class-wide aggregates (compat ``/api/assignment/...``).

``ix_snapshots_asg_size`` lets the nearest-rank percentiles walk sizes in order
(ORDER BY size OFFSET k) instead of sorting every snapshot of the assignment;
``ix_snapshots_asg_student_ts`` gains ``size`` so per-student means and latest times are
index-only scans (it still serves every (assignment, student, time) lookup it served).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_snapshots_asg_student_ts", table_name="snapshots")
    op.create_index(
        "ix_snapshots_asg_student_ts_size",
        "snapshots",
        ["assignment_id", "student_pk", "ts_us", "size"],
    )
    op.create_index("ix_snapshots_asg_size", "snapshots", ["assignment_id", "size"])


def downgrade() -> None:
    op.drop_index("ix_snapshots_asg_size", table_name="snapshots")
    op.drop_index("ix_snapshots_asg_student_ts_size", table_name="snapshots")
    op.create_index(
        "ix_snapshots_asg_student_ts", "snapshots", ["assignment_id", "student_pk", "ts_us"]
    )
