"""Drop ``ix_file_events_file_ts``: no query reads it, and every ingested event paid for it.

The timeline and the ProgSnap2 export read ``file_events`` by (assignment, student) —
``ix_file_events_asg_student_ts`` — and files are never deleted, so the ``file_id``
foreign key needs no index either. Each snapshot's file_events row was one more random
b-tree insert (~2-4 µs on SQLite, plus the WAL pages it dirtied per group commit).

``snapshots.event_id`` stays UNIQUE although ``events`` already makes ids unique: on
SQLite it is an unnamed constraint, and dropping it means rebuilding ``snapshots`` (its
foreign keys and 0003's stats triggers would fire on the implicit DELETE) for ~1 µs per
event (ids are time-ordered, so that index is appended to, not written at random).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_file_events_file_ts", table_name="file_events")


def downgrade() -> None:
    op.create_index("ix_file_events_file_ts", "file_events", ["file_id", "ts_us"])
