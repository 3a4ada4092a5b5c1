"""The old JCode-Watcher class-wide aggregates, computed in SQL.

The old service loaded every snapshot row into Python (1.7 s at 1.7k rows); here nothing
but the answer leaves the database. Per-student figures read ``assignment_student_stats``
(kept by triggers, one row per student); percentiles walk the (assignment_id, size) index;
build/run counts and total_graph_data are indexed aggregates. Unknown class or assignment
gives the empty answer.
"""

from __future__ import annotations

import math
from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel
from sqlalchemy import Connection, Float, cast, exists, func, or_, select

from watcher_backend import lookup
from watcher_backend.auth import require_reader
from watcher_backend.compat_read import BUILD_CATEGORIES, RUN_CATEGORIES
from watcher_backend.compat_write import parse_old_timestamp
from watcher_backend.db.models import AssignmentStudentStatsRow as Stats
from watcher_backend.db.models import (
    FileRow,
    NotebookCellRow,
    RunRow,
    SnapshotRow,
    StudentRow,
)
from watcher_backend.db.models import SnapshotSizeCount as Sizes
from watcher_backend.db.rawsql import RawSql
from watcher_common.timeutil import kst_compact, to_us

router = APIRouter(tags=["compat"], dependencies=[Depends(require_reader)])

TOP_N = 7


class TopStudent(BaseModel):
    student_num: str
    timestamp: str
    code_size: int


class AssignmentSummary(BaseModel):
    percentile_90: int | None
    percentile_50: int | None
    avg_bytes: float | None
    avg_num: float | None
    top_7: list[TopStudent]


class SizeChange(BaseModel):
    student_num: str
    size_change: int


class SizeChanges(BaseModel):
    results: list[SizeChange]


class AvgCount(BaseModel):
    avg_count: float


def nearest_rank_offset(count: int, pct: int) -> int:
    """0-based position of the ``pct``-th percentile among ``count`` sorted values, by the
    nearest-rank method: 1-based rank ``ceil(pct/100 * count)``, so the answer is always an
    actual snapshot size (p50 of [1, 2, 3, 4] is 2, p90 is 4)."""
    return max(1, math.ceil(pct * count / 100)) - 1


def percentiles(conn: Connection, asg: int) -> tuple[int, int] | tuple[None, None]:
    """(p90, p50) of the assignment's snapshot sizes, from ``snapshot_size_counts``
    (snapshots per distinct size, migration 0010): each percentile walks the counts in
    size order from the nearer end until the running count passes its nearest-rank
    offset, so p90 reads ~10 % of an assignment's distinct sizes and p50 ~half. The
    total is the counts' own sum, so the walk always ends on a size."""
    count = int(
        conn.execute(
            select(func.coalesce(func.sum(Sizes.snapshots), 0)).where(Sizes.assignment_id == asg)
        ).scalar_one()
    )
    if not count:
        return None, None
    # On the driver's cursor: thousands of rows, SQLAlchemy's row objects cost ~half
    raw = RawSql(conn)
    try:
        return _size_at(raw, asg, count, 90), _size_at(raw, asg, count, 50)
    finally:
        raw.cur.close()  # a walk stops early: do not leave its statement open


_SIZES_UP = "SELECT size, snapshots FROM snapshot_size_counts WHERE assignment_id = ? ORDER BY size"
_SIZES_DOWN = _SIZES_UP + " DESC"


def _size_at(raw: RawSql, asg: int, count: int, pct: int) -> int:
    offset = nearest_rank_offset(count, pct)
    from_top = offset >= count // 2
    if from_top:
        offset = count - 1 - offset
    cur = raw.execute(_SIZES_DOWN if from_top else _SIZES_UP, (asg,))
    seen = 0
    while rows := cur.fetchmany(512):  # the walk stops at the percentile
        for size, n in rows:
            seen += n
            if seen > offset:
                return int(size)
    raise AssertionError("unreachable: count is the sum of the rows walked")


def top_students(conn: Connection, asg: int) -> list[TopStudent]:
    """The 7 students whose latest snapshot is the most recent (ties: lower student id).

    Latest times come from ``assignment_student_stats`` (one row per student).
    ``code_size`` is the student's code size at that moment: the sum over their files of
    each file's latest snapshot size (the same measure as graph_data's ``total_size``).
    """
    top = conn.execute(
        select(Stats.student_pk, Stats.last_ts_us, StudentRow.student_id)
        .join(StudentRow, StudentRow.id == Stats.student_pk)
        .where(Stats.assignment_id == asg)
        .order_by(Stats.last_ts_us.desc(), StudentRow.student_id)
        .limit(TOP_N)
    ).all()
    if not top:
        return []
    latest_size = (
        select(SnapshotRow.size)
        .where(SnapshotRow.file_id == FileRow.id)
        .order_by(SnapshotRow.ts_us.desc(), SnapshotRow.id.desc())
        .limit(1)
        .correlate(FileRow)
        .scalar_subquery()
    )
    sizes: dict[int, int | None] = dict(
        conn.execute(
            select(FileRow.student_pk, func.sum(latest_size))
            .where(
                FileRow.assignment_id == asg,
                FileRow.student_pk.in_([r.student_pk for r in top]),
            )
            .group_by(FileRow.student_pk)
        ).all()
    )
    return [
        TopStudent(
            student_num=r.student_id,
            timestamp=kst_compact(r.last_ts_us),
            code_size=int(sizes.get(r.student_pk) or 0),
        )
        for r in top
    ]


@router.get("/api/assignment/{class_div}/{hw_name}")
def get_assignment_summary(request: Request, class_div: str, hw_name: str) -> AssignmentSummary:
    """Class-wide snapshot figures for one assignment.

    - ``percentile_90`` / ``percentile_50``: nearest-rank percentiles (see ``percentiles``)
      over all snapshot sizes of the assignment;
    - ``avg_bytes``: the mean over students of each student's mean snapshot size;
    - ``avg_num``: snapshots per student (students with at least one snapshot);
    - ``top_7``: see ``top_students``. Both averages are rounded to 2 decimals.

    Per-student figures come from ``assignment_student_stats`` (trigger-maintained, one
    row per student), so only the two percentile index walks touch the snapshots.
    """
    empty = AssignmentSummary(
        percentile_90=None, percentile_50=None, avg_bytes=None, avg_num=None, top_7=[]
    )
    with request.app.state.engine.connect() as conn:
        found = lookup.class_assignment(conn, class_div, hw_name)
        if found is None:
            return empty
        asg = found[1]
        students, total, mean_of_means = conn.execute(
            select(
                func.count(),
                func.sum(Stats.snapshots),
                func.avg(cast(Stats.size_sum, Float) / Stats.snapshots),
            ).where(Stats.assignment_id == asg, Stats.snapshots > 0)
        ).one()
        if not students:
            return empty
        total = int(total)
        p90, p50 = percentiles(conn, asg)
        return AssignmentSummary(
            percentile_90=p90,
            percentile_50=p50,
            avg_bytes=round(float(mean_of_means), 2),
            avg_num=round(total / students, 2),
            top_7=top_students(conn, asg),
        )


def _path_datetime(text: str, name: str) -> datetime:
    try:
        return parse_old_timestamp(text)
    except ValueError:
        raise HTTPException(
            422, f"{name} must be an ISO-8601 date-time (naive = Korea time), got {text!r}"
        ) from None


@router.get("/api/total_graph_data/{class_div}/{hw_name}/{start}/{end}")
def get_total_graph_data(
    request: Request, class_div: str, hw_name: str, start: str, end: str
) -> SizeChanges:
    """Per student with snapshots in [start, end] (inclusive), the sum of absolute size
    changes between successive snapshots of the same file inside the window (a file's
    first snapshot in the window counts 0). Sorted by student id."""
    start_us = to_us(_path_datetime(start, "start"))
    end_us = to_us(_path_datetime(end, "end"))
    with request.app.state.engine.connect() as conn:
        found = lookup.class_assignment(conn, class_div, hw_name)
        if found is None:
            return SizeChanges(results=[])
        delta = (
            SnapshotRow.size
            - func.lag(SnapshotRow.size).over(
                partition_by=SnapshotRow.file_id, order_by=(SnapshotRow.ts_us, SnapshotRow.id)
            )
        ).label("delta")
        steps = (
            select(SnapshotRow.student_pk, delta)
            .where(
                SnapshotRow.assignment_id == found[1],
                SnapshotRow.ts_us >= start_us,
                SnapshotRow.ts_us <= end_us,
            )
            .subquery()
        )
        rows = conn.execute(
            select(StudentRow.student_id, func.coalesce(func.sum(func.abs(steps.c.delta)), 0))
            .join(StudentRow, StudentRow.id == steps.c.student_pk)
            .group_by(StudentRow.student_id)
        ).all()
    # Sorted here: the same order on every database, whatever its collation.
    return SizeChanges(
        results=[SizeChange(student_num=r[0], size_change=int(r[1])) for r in sorted(rows)]
    )


def _avg_runs(request: Request, class_div: str, hw_name: str, categories: tuple[str, ...]) -> float:
    """Runs of ``categories`` in the assignment divided by the number of *active* students:
    those with at least one snapshot, process run or notebook cell in the assignment.
    Students enrolled but silent are not counted (the old API only knew students with
    data); 0.0 when nobody is active. Rounded to 2 decimals."""
    with request.app.state.engine.connect() as conn:
        found = lookup.class_assignment(conn, class_div, hw_name)
        if found is None:
            return 0.0
        cls, asg = found
        runs = conn.execute(
            select(func.count()).where(RunRow.assignment_id == asg, RunRow.category.in_(categories))
        ).scalar_one()
        active = conn.execute(
            select(func.count())
            .select_from(StudentRow)
            .where(
                StudentRow.class_id == cls,
                or_(
                    exists().where(
                        SnapshotRow.assignment_id == asg, SnapshotRow.student_pk == StudentRow.id
                    ),
                    exists().where(RunRow.assignment_id == asg, RunRow.student_pk == StudentRow.id),
                    exists().where(
                        NotebookCellRow.assignment_id == asg,
                        NotebookCellRow.student_pk == StudentRow.id,
                    ),
                ),
            )
        ).scalar_one()
    return round(runs / active, 2) if active else 0.0


@router.get("/api/build_avg/{class_div}/{hw_name}")
def get_build_avg(request: Request, class_div: str, hw_name: str) -> AvgCount:
    """Builds (compiler runs) per active student (see ``_avg_runs``)."""
    return AvgCount(avg_count=_avg_runs(request, class_div, hw_name, BUILD_CATEGORIES))


@router.get("/api/run_avg/{class_div}/{hw_name}")
def get_run_avg(request: Request, class_div: str, hw_name: str) -> AvgCount:
    """Program and script runs per active student (see ``_avg_runs``)."""
    return AvgCount(avg_count=_avg_runs(request, class_div, hw_name, RUN_CATEGORIES))
