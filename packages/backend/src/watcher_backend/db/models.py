"""Storage schema (SQLAlchemy 2). Alembic migrations under ``migrations/`` create it.

Times are stored as integer microseconds since the Unix epoch, UTC (``*_us`` columns):
portable between SQLite and PostgreSQL, cheap to index and to bucket in SQL.
Identity is normalised (class → students / assignments → files) so aggregate queries
touch small integer keys; ``snapshots`` / ``file_events`` / ``runs`` carry the student and
assignment keys too, so the timeline and the class-wide aggregates are single index scans.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; BIGINT would stay NULL there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class ClassRow(Base):
    __tablename__ = "classes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_div: Mapped[str] = mapped_column(String(128), unique=True)
    subject: Mapped[str] = mapped_column(String(128))
    division: Mapped[str] = mapped_column(String(32))


class StudentRow(Base):
    __tablename__ = "students"
    __table_args__ = (UniqueConstraint("class_id", "student_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"))
    student_id: Mapped[str] = mapped_column(String(64))


class AssignmentRow(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("class_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"))
    name: Mapped[str] = mapped_column(String(128))


class FileRow(Base):
    """A path below one student's assignment directory. Survives deletes (history stays)."""

    __tablename__ = "files"
    __table_args__ = (
        UniqueConstraint("student_pk", "assignment_id", "path"),
        Index("ix_files_compat", "student_pk", "assignment_id", "compat_name"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    path: Mapped[str] = mapped_column(Text)
    compat_name: Mapped[str] = mapped_column(Text)  # path with "/" → "@" (old API form)
    created_us: Mapped[int] = mapped_column(BigInteger)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    last_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


# Leading hex digits of a sha256 that ``ix_blobs_sha_prefix`` indexes (see BlobRow).
BLOB_KEY_CHARS = 16


class BlobRow(Base):
    """Content-addressed file content, zstd-compressed, stored once per sha256.

    Looked up by sha256 through an index on its first 16 hex digits (migration 0011), not
    by a unique index on all 64: random keys put every new blob on a random index page, and
    64-character entries made that index ~4x larger (more pages rewritten per commit) —
    the largest single ingest cost. The full sha256 is always compared too, so a shared
    prefix can never mix contents up. Duplicates are excluded by the writer (the only
    writer on SQLite); with PostgreSQL's concurrent writers a unique index on sha256
    keeps ``ON CONFLICT DO NOTHING`` (PostgreSQL only).
    """

    __tablename__ = "blobs"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    stored_size: Mapped[int] = mapped_column(BigInteger)
    codec: Mapped[str] = mapped_column(String(16))  # "zstd" | "zstd-d1" (dictionary) | "raw"
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_us: Mapped[int] = mapped_column(BigInteger)


Index("ix_blobs_sha_prefix", func.substr(BlobRow.sha256, 1, BLOB_KEY_CHARS))
Index("ux_blobs_sha256", BlobRow.sha256, unique=True).ddl_if(dialect="postgresql")


class EventRow(Base):
    """Idempotency registry: every accepted event id, whatever its kind, exactly once.

    SQLite: WITHOUT ROWID, so the TEXT primary key is the table's only b-tree (0008).
    """

    __tablename__ = "events"
    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 - SQLAlchemy reads it
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    received_us: Mapped[int] = mapped_column(BigInteger)


class SnapshotRow(Base):
    __tablename__ = "snapshots"
    __table_args__ = (
        Index("ix_snapshots_file_ts", "file_id", "ts_us"),
        # size: per-student means and latest times are index-only (compat aggregates);
        # id: the timeline's (ts, id) order (migration 0007)
        Index(
            "ix_snapshots_asg_student_ts_id_size",
            "assignment_id",
            "student_pk",
            "ts_us",
            "id",
            "size",
        ),
        Index("ix_snapshots_asg_ts", "assignment_id", "ts_us"),
        # no (assignment, size) index: percentiles read SnapshotSizeCount (0010); no index
        # on sha256: random keys cost ingest a page write per event (0009)
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # not UNIQUE: ``events`` already holds every stored id once (0008)
    event_id: Mapped[str] = mapped_column(String(128))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    ts_us: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None: size only
    source: Mapped[str] = mapped_column(String(16))
    reconciled: Mapped[bool] = mapped_column(Boolean, default=False)
    too_large: Mapped[bool] = mapped_column(Boolean, default=False)
    node: Mapped[str] = mapped_column(String(253), default="")
    received_us: Mapped[int] = mapped_column(BigInteger)


class FileEventRow(Base):
    """delete / rename of a file. A create or modify is its snapshot row (0008: no
    file_events row since; older create/modify rows were removed)."""

    __tablename__ = "file_events"
    __table_args__ = (
        Index("ix_file_events_asg_student_ts", "assignment_id", "student_pk", "ts_us"),
        # no (file_id, ts_us) index: no query reads one, and ingest paid for it (0005)
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128))
    file_id: Mapped[int] = mapped_column(ForeignKey("files.id"))
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"))
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    op: Mapped[str] = mapped_column(String(16))  # delete | rename (create | modify before 0008)
    ts_us: Mapped[int] = mapped_column(BigInteger)
    snapshot_id: Mapped[int | None] = mapped_column(ForeignKey("snapshots.id"), nullable=True)
    old_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # rename: where from
    reconciled: Mapped[bool] = mapped_column(Boolean, default=False)


class RunRow(Base):
    """One process run: a build (compiler), a program run, an interpreter run, ..."""

    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_asg_kind_start", "assignment_id", "category", "start_us"),
        Index("ix_runs_student_asg_start", "student_pk", "assignment_id", "start_us"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    class_id: Mapped[int] = mapped_column(ForeignKey("classes.id"))
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"))
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"), nullable=True)
    category: Mapped[str] = mapped_column(String(16))  # wire run_kind
    tool: Mapped[str] = mapped_column(String(64))
    exe: Mapped[str] = mapped_column(Text, default="")
    filename: Mapped[str] = mapped_column(Text, default="")
    argv: Mapped[list[str]] = mapped_column(JSON)
    argv_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    argv_len: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    cwd: Mapped[str] = mapped_column(Text, default="")
    hostname: Mapped[str] = mapped_column(String(253), default="")
    pid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    ppid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    uid: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    start_us: Mapped[int] = mapped_column(BigInteger)
    end_us: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    signal: Mapped[int | None] = mapped_column(Integer, nullable=True)
    core_dumped: Mapped[bool] = mapped_column(Boolean, default=False)
    output_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    process_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    file_size: Mapped[int] = mapped_column(BigInteger, default=0)  # bytes of code compiled/run
    diagnostics: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    stderr_excerpt: Mapped[str | None] = mapped_column(Text, nullable=True)
    identity_mismatch: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(16))
    node: Mapped[str] = mapped_column(String(253), default="")
    received_us: Mapped[int] = mapped_column(BigInteger)


class RunSourceRow(Base):
    """Links a run to the exact code state (sha256) of each source file it used."""

    __tablename__ = "run_sources"
    __table_args__ = (Index("ix_run_sources_run", "run_id"), Index("ix_run_sources_sha", "sha256"))
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class NotebookCellRow(Base):
    __tablename__ = "notebook_cells"
    __table_args__ = (Index("ix_cells_asg_student_ts", "assignment_id", "student_pk", "ts_us"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"))
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id"), nullable=True)
    notebook: Mapped[str] = mapped_column(Text, default="")
    ts_us: Mapped[int] = mapped_column(BigInteger)
    cell_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    execution_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(8))
    ename: Mapped[str | None] = mapped_column(String(256), nullable=True)
    duration_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    node: Mapped[str] = mapped_column(String(253), default="")
    received_us: Mapped[int] = mapped_column(BigInteger)


class AssignmentStudentStatsRow(Base):
    """Per (assignment, student) snapshot count, total size and latest time.

    Maintained in the same transaction as every snapshot change, so it is never stale:
    inserts by the ingest writer (one aggregated upsert per batch, ``store.INS_STATS``,
    migration 0004 — the store is the only code that inserts snapshots), deletes and
    updates by database triggers on ``snapshots`` (migration 0003). Class-wide aggregates
    read one row per student instead of every snapshot. A row exists only while the
    student has snapshots in the assignment.
    """

    __tablename__ = "assignment_student_stats"
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), primary_key=True)
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"), primary_key=True)
    snapshots: Mapped[int] = mapped_column(BigInteger)
    size_sum: Mapped[int] = mapped_column(BigInteger)
    last_ts_us: Mapped[int] = mapped_column(BigInteger)


class SnapshotSizeCount(Base):
    """How many snapshots of an assignment have each size: nearest-rank percentiles are a
    running sum over an assignment's rows (compat aggregate).

    Kept like ``AssignmentStudentStats``: inserts by the ingest writer (one aggregated
    upsert per (assignment, size) per batch, ``store.INS_SIZES``), deletes and updates of
    snapshots by triggers (migration 0010). A row exists only while its count is > 0.
    """

    __tablename__ = "snapshot_size_counts"
    __table_args__ = {"sqlite_with_rowid": False}  # noqa: RUF012 - SQLAlchemy reads it
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    snapshots: Mapped[int] = mapped_column(BigInteger)


class AnalyticsCacheRow(Base):
    """Per (assignment, student) analytics at the default thresholds, kept by the read side.

    ``analytics_cache.refresh`` brings a row up to date before the dashboard reads it: it
    folds in the student's snapshots, runs and cells newer than the ones counted here
    (``*_n`` rows up to id ``*_max_id``), or recomputes the student when rows arrived out
    of time order or went missing (migration 0006). ``state`` holds the figures and the
    running sums they continue from (``analytics_cache.State``).
    """

    __tablename__ = "analytics_cache"
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), primary_key=True)
    student_pk: Mapped[int] = mapped_column(ForeignKey("students.id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    snap_n: Mapped[int] = mapped_column(BigInteger)
    snap_max_id: Mapped[int] = mapped_column(BigInteger)
    run_n: Mapped[int] = mapped_column(BigInteger)
    run_max_id: Mapped[int] = mapped_column(BigInteger)
    cell_n: Mapped[int] = mapped_column(BigInteger)
    cell_max_id: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
