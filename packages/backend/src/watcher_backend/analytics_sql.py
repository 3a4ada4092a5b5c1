"""SQL for the analytics: per-student aggregates of one assignment, computed in the database.

Scale target: 300 students × 2,000 snapshots per student-assignment. Counts, first/last
times, time on task (window ``LAG`` over the union of activity times) and paste-like saves
(window ``LAG`` per file) are aggregated in SQL and return one row per student (or per
file); only builds — far fewer than saves — are loaded row by row, because EQ, RED and
error templates need their diagnostics in order. Portable SQLite (>= 3.25) / PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, case, func, literal, or_, select, union_all

from watcher_backend.analytics_metrics import CRASH_SIGNALS, Compile, error_template
from watcher_backend.db.tables import FILES, NOTEBOOK_CELLS, RUNS, SNAPSHOTS, STUDENTS

S, R, C = SNAPSHOTS.c, RUNS.c, NOTEBOOK_CELLS.c
COMPILE_CATEGORY = "build"  # compiler invocations; make & co. would count their gcc twice
RUN_CATEGORIES = ("run", "interpreter")
NO_DIAGNOSTIC = "(no diagnostic)"
KST_OFFSET_US = 9 * 3600 * 1_000_000  # Korea has no DST: a fixed offset buckets exactly
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


@dataclass
class Counts:
    saves: int = 0
    files: int = 0
    builds: int = 0
    builds_ok: int = 0
    builds_failed: int = 0
    runs: int = 0
    crashes: int = 0
    signalled: int = 0
    cells: int = 0
    cell_errors: int = 0
    first_us: int | None = None
    last_us: int | None = None
    time_on_task_us: int = 0
    paste_like: int = 0
    compiles: list[Compile] = field(default_factory=list)

    def seen(self, *times: int | None) -> None:
        for t in times:
            if t is None:
                continue
            self.first_us = t if self.first_us is None else min(self.first_us, t)
            self.last_us = t if self.last_us is None else max(self.last_us, t)


def students(conn: Connection, class_id: int) -> list[tuple[int, str]]:
    rows = conn.execute(
        select(STUDENTS.c.id, STUDENTS.c.student_id)
        .where(STUDENTS.c.class_id == class_id)
        .order_by(STUDENTS.c.student_id)
    ).all()
    return [(int(r[0]), str(r[1])) for r in rows]


def _one(stmt: Any, col: Any, student_pk: int | None) -> Any:
    return stmt if student_pk is None else stmt.where(col == student_pk)


def counts(conn: Connection, asg: int, student_pk: int | None = None) -> dict[int, Counts]:
    """Per-student counts and first/last activity of one assignment (one row each)."""
    out: dict[int, Counts] = {}

    def get(pk: int) -> Counts:
        return out.setdefault(int(pk), Counts())

    for pk, n, files, lo, hi in conn.execute(
        _one(
            select(
                S.student_pk,
                func.count(),
                func.count(S.file_id.distinct()),
                func.min(S.ts_us),
                func.max(S.ts_us),
            )
            .where(S.assignment_id == asg)
            .group_by(S.student_pk),
            S.student_pk,
            student_pk,
        )
    ).all():
        c = get(pk)
        c.saves, c.files = int(n), int(files)
        c.seen(lo, hi)

    is_build = R.category == COMPILE_CATEGORY
    is_run = R.category.in_(RUN_CATEGORIES)

    def n_if(cond: Any) -> Any:
        return func.sum(case((cond, 1), else_=0))

    for row in conn.execute(
        _one(
            select(
                R.student_pk,
                n_if(is_build),
                n_if(and_(is_build, R.exit_code == 0, R.signal.is_(None))),
                n_if(and_(is_build, or_(R.exit_code != 0, R.signal.is_not(None)))),
                n_if(is_run),
                n_if(and_(is_run, R.signal.in_(sorted(CRASH_SIGNALS)))),
                n_if(and_(is_run, R.signal.is_not(None))),
                func.min(R.start_us),
                func.max(func.coalesce(R.end_us, R.start_us)),
            )
            .where(R.assignment_id == asg)
            .group_by(R.student_pk),
            R.student_pk,
            student_pk,
        )
    ).all():
        c = get(row[0])
        c.builds, c.builds_ok, c.builds_failed = int(row[1]), int(row[2]), int(row[3])
        c.runs, c.crashes, c.signalled = int(row[4]), int(row[5]), int(row[6])
        c.seen(row[7], row[8])

    for pk, n, errors, lo, hi in conn.execute(
        _one(
            select(
                C.student_pk,
                func.count(),
                n_if(C.status == "error"),
                func.min(C.ts_us),
                func.max(C.ts_us),
            )
            .where(C.assignment_id == asg)
            .group_by(C.student_pk),
            C.student_pk,
            student_pk,
        )
    ).all():
        c = get(pk)
        c.cells, c.cell_errors = int(n), int(errors)
        c.seen(lo, hi)
    return out


def activity_times(conn: Connection, asg: int, student_pk: int) -> list[int]:
    """Every activity time of one student in one assignment (saves, runs, cells)."""
    parts = [
        select(S.ts_us).where(S.assignment_id == asg, S.student_pk == student_pk),
        select(R.start_us).where(R.assignment_id == asg, R.student_pk == student_pk),
        select(C.ts_us).where(C.assignment_id == asg, C.student_pk == student_pk),
    ]
    return sorted(int(t) for (t,) in conn.execute(union_all(*parts)).all())


def time_on_task(conn: Connection, asg: int, idle_us: int) -> dict[int, int]:
    """Σ min(gap, idle) per student, in SQL (see analytics_metrics.time_on_task_us)."""
    acts = union_all(
        select(S.student_pk.label("spk"), S.ts_us.label("t")).where(S.assignment_id == asg),
        select(R.student_pk.label("spk"), R.start_us.label("t")).where(R.assignment_id == asg),
        select(C.student_pk.label("spk"), C.ts_us.label("t")).where(C.assignment_id == asg),
    ).subquery()
    prev = func.lag(acts.c.t).over(partition_by=acts.c.spk, order_by=acts.c.t)
    gaps = select(acts.c.spk, (acts.c.t - prev).label("gap")).subquery()
    capped = case((gaps.c.gap > idle_us, literal(idle_us)), else_=gaps.c.gap)
    rows = conn.execute(
        select(gaps.c.spk, func.coalesce(func.sum(capped), 0)).group_by(gaps.c.spk)
    ).all()
    return {int(pk): int(v) for pk, v in rows}


def paste_counts(
    conn: Connection, asg: int, min_bytes: int, max_us: int, student_pk: int | None = None
) -> dict[int, int]:
    """Saves per student that grew their file by >= min_bytes within max_us of the file's
    previous save (see analytics_metrics.paste_like)."""
    seq = _one(
        select(
            S.student_pk.label("spk"),
            (
                S.size - func.lag(S.size).over(partition_by=S.file_id, order_by=(S.ts_us, S.id))
            ).label("added"),
            (
                S.ts_us - func.lag(S.ts_us).over(partition_by=S.file_id, order_by=(S.ts_us, S.id))
            ).label("dt"),
        ).where(S.assignment_id == asg),
        S.student_pk,
        student_pk,
    ).subquery()
    rows = conn.execute(
        select(seq.c.spk, func.count())
        .where(seq.c.added >= min_bytes, seq.c.dt <= max_us)
        .group_by(seq.c.spk)
    ).all()
    return {int(pk): int(n) for pk, n in rows}


@dataclass(frozen=True, slots=True)
class FileSizes:
    student_pk: int
    file_id: int
    first_size: int
    final_size: int


def first_and_final_sizes(
    conn: Connection, asg: int, student_pk: int | None = None
) -> list[FileSizes]:
    """Per file: size of its first and of its latest saved version. Two probes of the
    (file_id, ts_us) index per file — a window over every snapshot was 20x slower."""

    def edge(newest: bool) -> Any:
        order = (S.ts_us.desc(), S.id.desc()) if newest else (S.ts_us, S.id)
        return (
            select(S.size)
            .where(S.file_id == FILES.c.id)
            .order_by(*order)
            .limit(1)
            .correlate(FILES)
            .scalar_subquery()
        )

    rows = conn.execute(
        _one(
            select(FILES.c.student_pk, FILES.c.id, edge(False), edge(True)).where(
                FILES.c.assignment_id == asg
            ),
            FILES.c.student_pk,
            student_pk,
        )
    ).all()
    return [FileSizes(int(a), int(b), int(c), int(d)) for a, b, c, d in rows if c is not None]


@dataclass(frozen=True, slots=True)
class BuildRow:
    run_id: int
    student_pk: int
    start_us: int
    ok: bool | None
    diagnostics: list[dict[str, Any]]


def _outcome(exit_code: int | None, signal: int | None) -> bool | None:
    if signal is not None:
        return False
    return None if exit_code is None else exit_code == 0


def errors_of(diagnostics: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in diagnostics if d.get("severity", "error") in ("error", "fatal")]


def builds(conn: Connection, asg: int, student_pk: int | None = None) -> list[BuildRow]:
    """Compiles of the assignment, per student in time order, with their diagnostics."""
    rows = conn.execute(
        _one(
            select(R.id, R.student_pk, R.start_us, R.exit_code, R.signal, R.diagnostics)
            .where(R.assignment_id == asg, R.category == COMPILE_CATEGORY)
            .order_by(R.student_pk, R.start_us, R.id),
            R.student_pk,
            student_pk,
        )
    ).all()
    return [
        BuildRow(int(r[0]), int(r[1]), int(r[2]), _outcome(r[3], r[4]), list(r[5] or []))
        for r in rows
    ]


def as_compile(b: BuildRow) -> Compile:
    first: str | None = None
    if b.ok is False:
        errs = errors_of(b.diagnostics)
        first = error_template(str(errs[0].get("message", ""))) if errs else NO_DIAGNOSTIC
    return Compile(b.start_us, b.ok, first)


def heatmap(
    conn: Connection, class_id: int, assignment_ids: Sequence[int]
) -> list[tuple[int, int, str, int]]:
    """(weekday Mon=0, hour, kind, events) in Korea time, for the given assignments."""

    def bucket(ts: Any, kind: str) -> tuple[Any, Any, Any]:
        local = ts + KST_OFFSET_US
        # 1970-01-01 was a Thursday (weekday 3).
        return (
            ((local // DAY_US + 3) % 7).label("wd"),
            ((local // HOUR_US) % 24).label("hr"),
            literal(kind).label("kind"),
        )

    in_class = select(STUDENTS.c.id).where(STUDENTS.c.class_id == class_id)
    parts = union_all(
        select(*bucket(S.ts_us, "save")).where(S.assignment_id.in_(assignment_ids)),
        select(*bucket(R.start_us, "build")).where(
            R.class_id == class_id,
            R.assignment_id.in_(assignment_ids),
            R.category == COMPILE_CATEGORY,
        ),
        select(*bucket(R.start_us, "run")).where(
            R.class_id == class_id,
            R.assignment_id.in_(assignment_ids),
            R.category.in_(RUN_CATEGORIES),
        ),
        select(*bucket(C.ts_us, "cell")).where(
            C.student_pk.in_(in_class), C.assignment_id.in_(assignment_ids)
        ),
    ).subquery()
    cols = list(parts.c)
    rows = conn.execute(select(*cols, func.count()).group_by(*cols)).all()
    return [(int(r[0]), int(r[1]), str(r[2]), int(r[3])) for r in rows]
