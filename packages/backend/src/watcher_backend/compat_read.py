"""The old JCode-Watcher per-student read paths, same shapes as the old service.

Every answer is read from the database on each request (the old service cached build/run
logs for 10 minutes and never invalidated them). Unknown class, assignment, student or file
gives the old "empty" answer (empty list, or an object of nulls), never a 404 or a 500.

Times: snapshot lists use ``YYYYMMDD_HHMMSS`` Korea time; log and summary times are naive
ISO ``YYYY-MM-DDTHH:MM:SS`` Korea time (the JCode frontend parses them as LocalDateTime).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import Connection, exists, func, select

from watcher_backend import lookup
from watcher_backend.auth import require_reader
from watcher_backend.db.models import FileRow, RunRow, SnapshotRow
from watcher_common.timeutil import KST, from_us, kst_compact, kst_iso_naive

# Fixed-prefix routes: must be included before the generic /api/{class_div}/... routes.
fixed_router = APIRouter(tags=["compat"], dependencies=[Depends(require_reader)])
# /api/{class_div}/{hw}/{student}/logs/*: after the prefixed routes, before the writes.
logs_router = APIRouter(tags=["compat"], dependencies=[Depends(require_reader)])
# /api/{class_div}/{hw}/{student}[/{filename}]: included last, it matches almost anything.
generic_router = APIRouter(tags=["compat"], dependencies=[Depends(require_reader)])

BUILD_CATEGORIES = ("build",)
# The old "run log" held compiled binaries and python scripts alike.
RUN_CATEGORIES = ("run", "interpreter")
_US = 1_000_000


class SnapshotAvg(BaseModel):
    snapshot_avg: int | None
    snapshot_size_avg: float | None


class AssignmentSnapshotAvg(BaseModel):
    snapshot_avg: int | None
    snapshot_size_avg: float | None
    first: str | None
    last: str | None
    total: float | None
    interval: int | None


class Trend(BaseModel):
    timestamp: str
    total_size: int
    size_change: int


class Trends(BaseModel):
    trends: list[Trend]


class BuildLog(BaseModel):
    binary_path: str
    cmdline: str
    exit_code: int | None
    cwd: str
    target_path: str
    timestamp: str
    file_size: int


class RunLog(BaseModel):
    cmdline: str
    exit_code: int | None
    cwd: str
    target_path: str
    process_type: str
    timestamp: str
    file_size: int


def _conn(request: Request) -> Connection:
    conn: Connection = request.app.state.engine.connect()
    return conn


def _file_ids(conn: Connection, scope: lookup.StudentScope, filename: str) -> list[int]:
    # Several rows may share an old-API name ("a@b.c" and "a/b.c"); the old API saw one.
    return list(
        conn.execute(
            select(FileRow.id).where(
                FileRow.student_pk == scope.student_pk,
                FileRow.assignment_id == scope.assignment_id,
                FileRow.compat_name == filename,
            )
        ).scalars()
    )


def _cmdline(argv: Sequence[str]) -> str:
    # Compat rows were split so that this join gives the posted text back verbatim.
    return " ".join(argv)


def _run_rows(conn: Connection, scope: lookup.StudentScope, categories: tuple[str, ...]) -> Any:
    return conn.execute(
        select(
            RunRow.exe,
            RunRow.filename,
            RunRow.argv,
            RunRow.exit_code,
            RunRow.cwd,
            RunRow.target_path,
            RunRow.output_path,
            RunRow.process_type,
            RunRow.category,
            RunRow.tool,
            RunRow.start_us,
            RunRow.file_size,
        )
        .where(
            RunRow.student_pk == scope.student_pk,
            RunRow.assignment_id == scope.assignment_id,
            RunRow.category.in_(categories),
        )
        .order_by(RunRow.start_us.desc(), RunRow.id.desc())
    ).all()


@logs_router.get("/api/{class_div}/{hw_name}/{student_id}/logs/build")
def get_build_logs(
    request: Request, class_div: str, hw_name: str, student_id: str
) -> list[BuildLog]:
    """The student's builds in the assignment, newest first; file_size = bytes compiled."""
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            return []
        return [
            BuildLog(
                binary_path=r.exe,
                cmdline=_cmdline(r.argv),
                exit_code=r.exit_code,
                cwd=r.cwd,
                target_path=r.target_path or r.output_path or "",
                timestamp=kst_iso_naive(r.start_us),
                file_size=r.file_size or 0,
            )
            for r in _run_rows(conn, scope, BUILD_CATEGORIES)
        ]


def _process_type(category: str, tool: str) -> str:
    return "python" if category == "interpreter" or tool.startswith("python") else "binary"


@logs_router.get("/api/{class_div}/{hw_name}/{student_id}/logs/run")
def get_run_logs(request: Request, class_div: str, hw_name: str, student_id: str) -> list[RunLog]:
    """Program and script runs, newest first; file_size = bytes of the code run."""
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            return []
        return [
            RunLog(
                cmdline=_cmdline(r.argv),
                exit_code=r.exit_code,
                cwd=r.cwd,
                target_path=r.target_path or r.filename or "",
                process_type=r.process_type or _process_type(r.category, r.tool),
                timestamp=kst_iso_naive(r.start_us),
                file_size=r.file_size or 0,
            )
            for r in _run_rows(conn, scope, RUN_CATEGORIES)
        ]


@fixed_router.get("/api/snapshot_avg/{class_div}/{hw_name}/{student_id}/{filename}")
def get_snapshot_avg(
    request: Request, class_div: str, hw_name: str, student_id: str, filename: str
) -> SnapshotAvg:
    """Number of snapshots of one file and their mean size (2 decimals); nulls if none."""
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        ids = _file_ids(conn, scope, filename) if scope is not None else []
        if not ids:
            return SnapshotAvg(snapshot_avg=None, snapshot_size_avg=None)
        count, mean = conn.execute(
            select(func.count(), func.avg(SnapshotRow.size)).where(SnapshotRow.file_id.in_(ids))
        ).one()
    if not count:
        return SnapshotAvg(snapshot_avg=None, snapshot_size_avg=None)
    return SnapshotAvg(snapshot_avg=count, snapshot_size_avg=round(float(mean), 2))


@fixed_router.get("/api/assignments/snapshot_avg/{class_div}/{hw_name}/{student_id}")
def get_assignment_snapshot_avg(
    request: Request, class_div: str, hw_name: str, student_id: str
) -> AssignmentSnapshotAvg:
    """Count and mean size of all the student's snapshots in the assignment, first and last
    snapshot time, ``total`` = seconds first→last (float), ``interval`` = whole seconds
    between the last two snapshots (0 with a single snapshot). All null with no snapshots.
    Times are compared at whole seconds, like the old ``YYYYMMDD_HHMMSS`` names.
    """
    empty = AssignmentSnapshotAvg(
        snapshot_avg=None, snapshot_size_avg=None, first=None, last=None, total=None, interval=None
    )
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            return empty
        where = (
            SnapshotRow.assignment_id == scope.assignment_id,
            SnapshotRow.student_pk == scope.student_pk,
        )
        count, mean, first_us, last_us = conn.execute(
            select(
                func.count(),
                func.avg(SnapshotRow.size),
                func.min(SnapshotRow.ts_us),
                func.max(SnapshotRow.ts_us),
            ).where(*where)
        ).one()
        if not count:
            return empty
        last_two = list(
            conn.execute(
                select(SnapshotRow.ts_us).where(*where).order_by(SnapshotRow.ts_us.desc()).limit(2)
            ).scalars()
        )
    interval = last_two[0] // _US - last_two[1] // _US if len(last_two) == 2 else 0
    return AssignmentSnapshotAvg(
        snapshot_avg=count,
        snapshot_size_avg=round(float(mean), 2),
        first=kst_iso_naive(first_us),
        last=kst_iso_naive(last_us),
        total=float(last_us // _US - first_us // _US),
        interval=interval,
    )


def trends_from_rows(rows: Sequence[tuple[int, int, int]], interval_min: int) -> list[Trend]:
    """Bucket ``(file_id, ts_us, size)`` rows (ascending time) into ``interval_min`` buckets.

    Buckets start at the first snapshot's minute. A bucket's ``total_size`` is the sum over
    files of each file's latest size at the end of the bucket; ``size_change`` is the
    difference to the previous non-empty bucket (the first bucket's change is its total).
    Buckets without a snapshot are left out.
    """
    if not rows:
        return []
    width = interval_min * 60 * _US
    base = rows[0][1] - rows[0][1] % (60 * _US)
    latest: dict[int, int] = {}
    running = 0
    previous = 0
    trends: list[Trend] = []
    bucket: int | None = None

    def emit(b: int) -> None:
        nonlocal previous
        label = from_us(base + b * width).astimezone(KST).strftime("%Y%m%d_%H%M")
        trends.append(Trend(timestamp=label, total_size=running, size_change=running - previous))
        previous = running

    for file_id, ts_us, size in rows:
        b = (ts_us - base) // width
        if bucket is not None and b != bucket:
            emit(bucket)
        running += size - latest.get(file_id, 0)
        latest[file_id] = size
        bucket = b
    if bucket is not None:
        emit(bucket)
    return trends


@fixed_router.get("/api/graph_data/{class_div}/{hw_name}/{student_id}/{interval}")
def get_graph_data(
    request: Request, class_div: str, hw_name: str, student_id: str, interval: int
) -> Trends:
    """Code size over time in buckets of ``interval`` minutes (see ``trends_from_rows``)."""
    if interval <= 0:
        raise HTTPException(400, "Interval must be a positive integer.")
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            return Trends(trends=[])
        rows = conn.execute(
            select(SnapshotRow.file_id, SnapshotRow.ts_us, SnapshotRow.size)
            .where(
                SnapshotRow.assignment_id == scope.assignment_id,
                SnapshotRow.student_pk == scope.student_pk,
            )
            .order_by(SnapshotRow.ts_us, SnapshotRow.id)
        ).all()
    return Trends(trends=trends_from_rows([(r[0], r[1], r[2]) for r in rows], interval))


@generic_router.get("/api/{class_div}/{hw_name}/{student_id}")
def get_file_names(request: Request, class_div: str, hw_name: str, student_id: str) -> list[str]:
    """The student's file names (old ``@`` form) in the assignment: every file that has a
    saved version or still exists (a deleted file keeps its history), sorted by name."""
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            return []
        has_snapshot = exists().where(SnapshotRow.file_id == FileRow.id)
        names = conn.execute(
            select(FileRow.compat_name)
            .where(
                FileRow.student_pk == scope.student_pk,
                FileRow.assignment_id == scope.assignment_id,
                (FileRow.deleted.is_(False)) | has_snapshot,
            )
            .distinct()
        ).scalars()
        # Sorted here, by code point: database collations differ (PostgreSQL's ignores '@').
        return sorted(names)


@generic_router.get("/api/{class_div}/{hw_name}/{student_id}/{filename}")
def get_snapshot_times(
    request: Request, class_div: str, hw_name: str, student_id: str, filename: str
) -> list[str]:
    """The file's snapshot times, ``YYYYMMDD_HHMMSS`` Korea time, ascending. Two saves in
    the same second share one old-style name, so they are listed once."""
    with _conn(request) as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        ids = _file_ids(conn, scope, filename) if scope is not None else []
        if not ids:
            return []
        stamps = conn.execute(
            select(SnapshotRow.ts_us)
            .where(SnapshotRow.file_id.in_(ids))
            .order_by(SnapshotRow.ts_us)
        ).scalars()
        out: list[str] = []
        for us in stamps:
            text = kst_compact(us)
            if not out or out[-1] != text:
                out.append(text)
        return out
