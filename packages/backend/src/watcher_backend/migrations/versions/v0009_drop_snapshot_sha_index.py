"""Drop ``ix_snapshots_sha``: a random-key index that cost ingest more than it served.

Its only reader was a run's "which saved version held this source hash" lookup, which
now walks the student's saves of the run's assignment through
``ix_snapshots_asg_student_ts_id_size`` (then the student's other assignments). SHA-256
keys land on random pages: with it, every batch of 1 KiB snapshots wrote 6.6 KB per event
to the WAL and the database file; without it 4.2 KB, and ~20 % less writer CPU
(bench b's data, in-process).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_snapshots_sha", table_name="snapshots")


def downgrade() -> None:
    op.create_index("ix_snapshots_sha", "snapshots", ["sha256"])
