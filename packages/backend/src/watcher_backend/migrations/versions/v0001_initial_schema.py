"""Initial schema: exactly ``watcher_backend.db.models`` as first released.

Revision ID: 0001
Revises:
Create Date: 2026-11-26

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("stored_size", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(length=16), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "classes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("class_div", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("division", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("class_div"),
    )
    op.create_table(
        "events",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("class_id", "name"),
    )
    op.create_table(
        "students",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("student_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("class_id", "student_id"),
    )
    op.create_table(
        "files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("compat_name", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("last_sha256", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["student_pk"],
            ["students.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("student_pk", "assignment_id", "path"),
    )
    op.create_index("ix_files_compat", "files", ["student_pk", "assignment_id", "compat_name"])

    op.create_table(
        "notebook_cells",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=True),
        sa.Column("notebook", sa.Text(), nullable=False),
        sa.Column("ts_us", sa.BigInteger(), nullable=False),
        sa.Column("cell_index", sa.Integer(), nullable=True),
        sa.Column("execution_count", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("ename", sa.String(length=256), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["student_pk"],
            ["students.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_cells_asg_student_ts", "notebook_cells", ["assignment_id", "student_pk", "ts_us"]
    )

    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("class_id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=True),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("tool", sa.String(length=64), nullable=False),
        sa.Column("exe", sa.Text(), nullable=False),
        sa.Column("filename", sa.Text(), nullable=False),
        sa.Column("argv", sa.JSON(), nullable=False),
        sa.Column("argv_truncated", sa.Boolean(), nullable=False),
        sa.Column("argv_len", sa.BigInteger(), nullable=True),
        sa.Column("cwd", sa.Text(), nullable=False),
        sa.Column("hostname", sa.String(length=253), nullable=False),
        sa.Column("pid", sa.BigInteger(), nullable=True),
        sa.Column("ppid", sa.BigInteger(), nullable=True),
        sa.Column("uid", sa.BigInteger(), nullable=True),
        sa.Column("start_us", sa.BigInteger(), nullable=False),
        sa.Column("end_us", sa.BigInteger(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("signal", sa.Integer(), nullable=True),
        sa.Column("core_dumped", sa.Boolean(), nullable=False),
        sa.Column("output_path", sa.Text(), nullable=True),
        sa.Column("target_path", sa.Text(), nullable=True),
        sa.Column("process_type", sa.String(length=32), nullable=True),
        sa.Column("file_size", sa.BigInteger(), nullable=False),
        sa.Column("diagnostics", sa.JSON(), nullable=False),
        sa.Column("stderr_excerpt", sa.Text(), nullable=True),
        sa.Column("identity_mismatch", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("node", sa.String(length=253), nullable=False),
        sa.Column("received_us", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["class_id"],
            ["classes.id"],
        ),
        sa.ForeignKeyConstraint(
            ["student_pk"],
            ["students.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index("ix_runs_asg_kind_start", "runs", ["assignment_id", "category", "start_us"])
    op.create_index(
        "ix_runs_student_asg_start", "runs", ["student_pk", "assignment_id", "start_us"]
    )

    op.create_table(
        "run_sources",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_run_sources_run", "run_sources", ["run_id"])
    op.create_index("ix_run_sources_sha", "run_sources", ["sha256"])

    op.create_table(
        "snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
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
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
        ),
        sa.ForeignKeyConstraint(
            ["student_pk"],
            ["students.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_snapshots_asg_student_ts", "snapshots", ["assignment_id", "student_pk", "ts_us"]
    )
    op.create_index("ix_snapshots_asg_ts", "snapshots", ["assignment_id", "ts_us"])
    op.create_index("ix_snapshots_file_ts", "snapshots", ["file_id", "ts_us"])
    op.create_index("ix_snapshots_sha", "snapshots", ["sha256"])

    op.create_table(
        "file_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("file_id", sa.Integer(), nullable=False),
        sa.Column("student_pk", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("ts_us", sa.BigInteger(), nullable=False),
        sa.Column(
            "snapshot_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("old_path", sa.Text(), nullable=True),
        sa.Column("reconciled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["assignment_id"],
            ["assignments.id"],
        ),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["files.id"],
        ),
        sa.ForeignKeyConstraint(
            ["snapshot_id"],
            ["snapshots.id"],
        ),
        sa.ForeignKeyConstraint(
            ["student_pk"],
            ["students.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_file_events_asg_student_ts", "file_events", ["assignment_id", "student_pk", "ts_us"]
    )
    op.create_index("ix_file_events_file_ts", "file_events", ["file_id", "ts_us"])


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index("ix_file_events_file_ts", table_name="file_events")
    op.drop_index("ix_file_events_asg_student_ts", table_name="file_events")

    op.drop_table("file_events")
    op.drop_index("ix_snapshots_sha", table_name="snapshots")
    op.drop_index("ix_snapshots_file_ts", table_name="snapshots")
    op.drop_index("ix_snapshots_asg_ts", table_name="snapshots")
    op.drop_index("ix_snapshots_asg_student_ts", table_name="snapshots")

    op.drop_table("snapshots")
    op.drop_index("ix_run_sources_sha", table_name="run_sources")
    op.drop_index("ix_run_sources_run", table_name="run_sources")

    op.drop_table("run_sources")
    op.drop_index("ix_runs_student_asg_start", table_name="runs")
    op.drop_index("ix_runs_asg_kind_start", table_name="runs")

    op.drop_table("runs")
    op.drop_index("ix_cells_asg_student_ts", table_name="notebook_cells")

    op.drop_table("notebook_cells")
    op.drop_index("ix_files_compat", table_name="files")

    op.drop_table("files")
    op.drop_table("students")
    op.drop_table("assignments")
    op.drop_table("events")
    op.drop_table("classes")
    op.drop_table("blobs")
