"""Analytics API (role reader): assignment summary, per-student analytics, error summary,
activity heatmap. Metric definitions: ``analytics_metrics`` and docs/analytics.md.

Integrity figures are *evidence* for a human to look at (counts and the saves behind
them), never verdicts. Times are UTC on the wire; the heatmap buckets in Asia/Seoul.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel
from sqlalchemy import Connection, select

from watcher_backend import analytics_cache as cache
from watcher_backend import analytics_metrics as m
from watcher_backend import analytics_sql as q
from watcher_backend import export_csv, export_progsnap2, lookup
from watcher_backend.analytics_figures import (
    ClassStats,
    Flag,
    ParamsDep,
    StudentFigures,
    assignment_figures,
)
from watcher_backend.auth import require_reader
from watcher_backend.db.tables import ASSIGNMENTS, FILES, SNAPSHOTS
from watcher_common.timeutil import from_us

router = APIRouter(prefix="/api/v1", tags=["analytics"], dependencies=[Depends(require_reader)])
router.include_router(export_progsnap2.router)
router.include_router(export_csv.router)

SortKey = Literal[
    "student_id",
    "last_activity",
    "saves",
    "builds",
    "build_success_rate",
    "runs",
    "crashes",
    "time_on_task_s",
    "error_quotient",
    "repeated_error_density",
    "paste_like",
    "flags",
]


class Summary(BaseModel):
    class_div: str
    assignment: str
    params: dict[str, float]
    stats: ClassStats
    total: int  # rows after filtering, before pagination
    offset: int
    limit: int
    items: list[StudentFigures]


def _scope(conn: Connection, class_div: str, hw: str) -> tuple[int, int]:
    found = lookup.class_assignment(conn, class_div, hw)
    if found is None:
        raise HTTPException(404, "unknown class or assignment")
    return found


def _sort_key(key: SortKey) -> object:
    def k(r: StudentFigures) -> tuple[bool, object]:
        v: object = len(r.flags) if key == "flags" else getattr(r, key)
        if isinstance(v, datetime):
            v = v.timestamp()
        return (v is None, v if v is not None else 0)

    return k


@router.get("/classes/{class_div}/assignments/{hw}/summary")
def summary(
    request: Request,
    class_div: str,
    hw: str,
    p: ParamsDep,
    sort: SortKey = "student_id",
    order: Literal["asc", "desc"] = "asc",
    search: Annotated[str | None, Query(description="student id contains")] = None,
    flag: Annotated[Flag | None, Query(description="only students with this flag")] = None,
    started: Annotated[bool | None, Query(description="only (not) started")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Summary:
    """The assignment's student table: every student of the class with all figures and
    evidence flags; sorted, filtered and paginated on the server (nulls last)."""
    with request.app.state.engine.connect() as conn:
        cls, asg = _scope(conn, class_div, hw)
        rows, stats = assignment_figures(conn, cls, asg, p)
    if search:
        rows = [r for r in rows if search in r.student_id]
    if flag is not None:
        rows = [r for r in rows if flag in r.flags]
    if started is not None:
        rows = [r for r in rows if r.started == started]
    present = [r for r in rows if getattr(r, sort, 0) is not None]
    missing = [r for r in rows if getattr(r, sort, 0) is None]
    present.sort(key=_sort_key(sort), reverse=order == "desc")  # type: ignore[arg-type]
    rows = present + missing
    return Summary(
        class_div=class_div,
        assignment=hw,
        params={k: float(v) for k, v in p.__dict__.items()},
        stats=stats,
        total=len(rows),
        offset=offset,
        limit=limit,
        items=rows[offset : offset + limit],
    )


class PasteEvidence(BaseModel):
    snapshot_id: int
    path: str
    ts: datetime
    added_bytes: int
    seconds: float


class FileEvidence(BaseModel):
    path: str
    first_size: int
    final_size: int
    first_save_near_final: bool


class ErrorString(BaseModel):
    template: str | None
    length: int


class StudentAnalytics(BaseModel):
    class_div: str
    assignment: str
    figures: StudentFigures
    class_stats: ClassStats
    paste_like: list[PasteEvidence]
    files: list[FileEvidence]
    repeated_errors: list[ErrorString]  # strings of >= 2 identical failed compiles
    top_errors: list[tuple[str, int]]  # (template, occurrences) in this student's builds


@router.get("/classes/{class_div}/assignments/{hw}/students/{student_id}/analytics")
def student_analytics(
    request: Request, class_div: str, hw: str, student_id: str, p: ParamsDep
) -> StudentAnalytics:
    """One student's figures with the evidence behind each flag."""
    with request.app.state.engine.connect() as conn:
        cls, asg = _scope(conn, class_div, hw)
        spk = lookup.student_pk(conn, cls, student_id)
        if spk is None:
            raise HTTPException(404, f"unknown student {student_id!r}")
        rows, stats = assignment_figures(conn, cls, asg, p, spk)
        saves = conn.execute(
            select(SNAPSHOTS.c.id, SNAPSHOTS.c.file_id, SNAPSHOTS.c.ts_us, SNAPSHOTS.c.size).where(
                SNAPSHOTS.c.assignment_id == asg, SNAPSHOTS.c.student_pk == spk
            )
        ).all()
        paths = dict(
            conn.execute(
                select(FILES.c.id, FILES.c.path).where(
                    FILES.c.assignment_id == asg, FILES.c.student_pk == spk
                )
            ).all()
        )
        sizes = q.first_and_final_sizes(conn, asg, spk)
        builds = q.builds(conn, asg, spk)
    pastes = m.paste_like(
        (m.Save(int(a), int(b), int(c), int(d)) for a, b, c, d in saves),
        p.paste_bytes,
        p.paste_seconds,
    )
    compiles = [q.as_compile(b) for b in builds]
    top: Counter[str] = Counter(
        m.error_template(str(d.get("message", "")))
        for b in builds
        for d in q.errors_of(b.diagnostics)
    )
    return StudentAnalytics(
        class_div=class_div,
        assignment=hw,
        figures=rows[0],
        class_stats=stats,
        paste_like=[
            PasteEvidence(
                snapshot_id=x.snapshot_id,
                path=paths.get(x.file_id, ""),
                ts=from_us(x.ts_us),
                added_bytes=x.added_bytes,
                seconds=x.seconds,
            )
            for x in pastes
        ],
        files=sorted(
            (
                FileEvidence(
                    path=paths.get(f.file_id, ""),
                    first_size=f.first_size,
                    final_size=f.final_size,
                    first_save_near_final=m.first_save_near_final(
                        f.first_size, f.final_size, p.first_save_ratio
                    ),
                )
                for f in sizes
            ),
            key=lambda f: f.path,
        ),
        repeated_errors=[
            ErrorString(template=t, length=n) for t, n in m.error_strings(compiles) if n > 1
        ],
        top_errors=top.most_common(20),
    )


class ErrorCount(BaseModel):
    template: str
    example: str  # one full message with this template
    occurrences: int  # error diagnostics
    builds: int  # failed builds whose diagnostics include it
    students: int


class StuckStudent(BaseModel):
    student_id: str
    template: str | None
    streak: int  # consecutive failed compiles with this first error
    last_build: datetime


class ErrorSummary(BaseModel):
    class_div: str
    assignment: str
    builds: int
    failed_builds: int
    top: list[ErrorCount]
    stuck: list[StuckStudent]


@router.get("/classes/{class_div}/assignments/{hw}/errors")
def error_summary(
    request: Request,
    class_div: str,
    hw: str,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    stuck_streak: Annotated[int, Query(ge=2)] = m.DEFAULT_STUCK_STREAK,
) -> ErrorSummary:
    """Most frequent compile errors (normalised templates) and students stuck on a
    repeated error (longest string of identical failed compiles >= ``stuck_streak``)."""
    with request.app.state.engine.connect() as conn:
        cls, asg = _scope(conn, class_div, hw)
        roster = dict(q.students(conn, cls))
        states = cache.refresh(conn, cls, asg)
    # Merged in student order, each student's templates in first-seen order: the same
    # order (ties in most_common) and examples as walking every build in that order.
    occurrences: Counter[str] = Counter()
    in_builds: Counter[str] = Counter()
    students: Counter[str] = Counter()
    example: dict[str, str] = {}
    stuck = []
    for pk in sorted(states):
        st = states[pk]
        for tpl, (occ, nb, msg) in st.errors.items():
            occurrences[tpl] += occ
            in_builds[tpl] += nb
            students[tpl] += 1
            example.setdefault(tpl, msg)
        worst, n = st.longest_repeat()
        if st.builds and n >= stuck_streak and st.build_last_us is not None:
            stuck.append(StuckStudent(
                student_id=roster.get(pk, "?"), template=worst, streak=n,
                last_build=from_us(st.build_last_us),
            ))  # fmt: skip
    stuck.sort(key=lambda s: (-s.streak, s.student_id))
    return ErrorSummary(
        class_div=class_div,
        assignment=hw,
        builds=sum(st.builds for st in states.values()),
        failed_builds=sum(st.builds_failed for st in states.values()),
        top=[
            ErrorCount(
                template=t,
                example=example[t],
                occurrences=n,
                builds=in_builds[t],
                students=students[t],
            )
            for t, n in occurrences.most_common(limit)
        ],
        stuck=stuck,
    )


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HeatKind = Literal["save", "build", "run", "cell"]


class Heatmap(BaseModel):
    class_div: str
    assignment: str | None
    timezone: str
    weekdays: list[str]
    total: list[list[int]]  # [weekday Mon=0][hour 0-23] events
    by_kind: dict[HeatKind, list[list[int]]]


@router.get("/classes/{class_div}/heatmap")
def heatmap(
    request: Request,
    class_div: str,
    assignment: Annotated[str | None, Query(description="one assignment (default all)")] = None,
) -> Heatmap:
    """Activity events (saves, builds, runs, cells) per weekday × hour in Asia/Seoul."""
    with request.app.state.engine.connect() as conn:
        cls = lookup.class_id(conn, class_div)
        if cls is None:
            raise HTTPException(404, f"unknown class {class_div!r}")
        stmt = select(ASSIGNMENTS.c.id).where(ASSIGNMENTS.c.class_id == cls)
        if assignment is not None:
            stmt = stmt.where(ASSIGNMENTS.c.name == assignment)
        ids = [int(i) for (i,) in conn.execute(stmt).all()]
        if assignment is not None and not ids:
            raise HTTPException(404, f"unknown assignment {assignment!r}")
        states = [st for asg in ids for st in cache.refresh(conn, cls, asg).values()]
    kinds: tuple[HeatKind, ...] = ("save", "build", "run", "cell")
    by_kind = {k: [[0] * 24 for _ in range(7)] for k in kinds}
    total = [[0] * 24 for _ in range(7)]
    for st in states:
        for kind, buckets in st.heat.items():
            grid = by_kind[kind]  # type: ignore[index]
            for key, n in buckets.items():
                wd, hr = divmod(int(key), 24)
                grid[wd][hr] += n
                total[wd][hr] += n
    return Heatmap(
        class_div=class_div,
        assignment=assignment,
        timezone="Asia/Seoul",
        weekdays=list(WEEKDAYS),
        total=total,
        by_kind=by_kind,
    )
