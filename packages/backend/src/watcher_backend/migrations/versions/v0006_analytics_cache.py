"""Per (assignment, student) analytics cache, kept up to date by the read side.

The class dashboard's figures (time on task, EQ/RED inputs, paste-like saves, error
templates, heatmap buckets) took seconds per request at 300 students x 2,000 saves when
computed from every row. ``analytics_cache`` holds them per student with the row counts
and highest ids they cover; a request folds in only newer rows (``analytics_cache.py``).
Empty at creation: the first request fills it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "analytics_cache",
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("snap_n", sa.BigInteger(), nullable=False),
        sa.Column("snap_max_id", sa.BigInteger(), nullable=False),
        sa.Column("run_n", sa.BigInteger(), nullable=False),
        sa.Column("run_max_id", sa.BigInteger(), nullable=False),
        sa.Column("cell_n", sa.BigInteger(), nullable=False),
        sa.Column("cell_max_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"]),
        sa.ForeignKeyConstraint(["student_pk"], ["students.id"]),
        sa.PrimaryKeyConstraint("assignment_id", "student_pk"),
    )


def downgrade() -> None:
    op.drop_table("analytics_cache")
