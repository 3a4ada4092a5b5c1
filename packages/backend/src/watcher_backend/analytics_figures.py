"""Per-student figures of one assignment (shared by the analytics API and the exports).

Combines the SQL aggregates (``analytics_sql``) with the pure metrics
(``analytics_metrics``); thresholds come from ``Params`` (query parameters in the API).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Connection

from watcher_backend import analytics_cache as cache
from watcher_backend import analytics_metrics as m
from watcher_backend import analytics_sql as q
from watcher_common.timeutil import from_us

Flag = Literal["paste_like", "first_save_near_final", "low_activity", "stuck"]


@dataclass(frozen=True)
class Params:
    """Thresholds, overridable per request (defaults documented in analytics_metrics)."""

    idle_minutes: float = m.DEFAULT_IDLE_S / 60
    paste_bytes: int = m.DEFAULT_PASTE_BYTES
    paste_seconds: float = m.DEFAULT_PASTE_SECONDS
    first_save_ratio: float = m.DEFAULT_FIRST_SAVE_RATIO
    low_activity_ratio: float = m.DEFAULT_LOW_ACTIVITY_RATIO
    stuck_streak: int = m.DEFAULT_STUCK_STREAK

    @property
    def idle_us(self) -> int:
        return int(self.idle_minutes * 60 * m.US)


def params(
    idle_minutes: Annotated[float, Query(gt=0, le=24 * 60)] = m.DEFAULT_IDLE_S / 60,
    paste_bytes: Annotated[int, Query(ge=1, le=2**63 - 1)] = m.DEFAULT_PASTE_BYTES,
    paste_seconds: Annotated[float, Query(gt=0)] = m.DEFAULT_PASTE_SECONDS,
    first_save_ratio: Annotated[float, Query(gt=0, le=1)] = m.DEFAULT_FIRST_SAVE_RATIO,
    low_activity_ratio: Annotated[float, Query(gt=0, le=1)] = m.DEFAULT_LOW_ACTIVITY_RATIO,
    stuck_streak: Annotated[int, Query(ge=2)] = m.DEFAULT_STUCK_STREAK,
) -> Params:
    return Params(
        idle_minutes,
        paste_bytes,
        paste_seconds,
        first_save_ratio,
        low_activity_ratio,
        stuck_streak,
    )


ParamsDep = Annotated[Params, Depends(params)]


class StudentFigures(BaseModel):
    student_id: str
    started: bool
    saves: int
    files: int
    builds: int
    builds_ok: int
    builds_failed: int
    build_success_rate: float | None  # ok / (ok + failed); null without a finished build
    runs: int
    crashes: int  # runs ended by SIGSEGV, SIGABRT, SIGFPE, SIGBUS, SIGILL, SIGTRAP, SIGSYS
    signalled: int  # runs ended by any signal (crashes + interrupted/killed)
    cells: int
    cell_errors: int
    first_activity: datetime | None
    last_activity: datetime | None
    time_on_task_s: float
    error_quotient: float | None
    repeated_error_density: float
    longest_repeat: int
    paste_like: int
    first_save_near_final: int  # files
    flags: list[Flag]


class ClassStats(BaseModel):
    students: int
    started: int
    median_time_on_task_s: float | None


def student_figures(
    student_id: str,
    c: q.Counts,
    tot_us: int,
    near_final: int,
    median_us: float | None,
    p: Params,
    compiled: tuple[float | None, float, int] | None = None,
) -> StudentFigures:
    """``compiled``: (EQ, RED, longest repeat) when known (cache), else from c.compiles."""
    finished = c.builds_ok + c.builds_failed
    started = bool(c.saves or c.builds or c.runs or c.cells)
    if compiled is None:
        compiled = (
            m.error_quotient(c.compiles),
            m.repeated_error_density(c.compiles),
            m.longest_repeat(c.compiles)[1],
        )
    eq, red, streak = compiled
    flags: list[Flag] = []
    if c.paste_like:
        flags.append("paste_like")
    if near_final:
        flags.append("first_save_near_final")
    if started and m.low_activity(tot_us, median_us, p.low_activity_ratio):
        flags.append("low_activity")
    if streak >= p.stuck_streak:
        flags.append("stuck")
    return StudentFigures(
        student_id=student_id,
        started=started,
        saves=c.saves,
        files=c.files,
        builds=c.builds,
        builds_ok=c.builds_ok,
        builds_failed=c.builds_failed,
        build_success_rate=c.builds_ok / finished if finished else None,
        runs=c.runs,
        crashes=c.crashes,
        signalled=c.signalled,
        cells=c.cells,
        cell_errors=c.cell_errors,
        first_activity=from_us(c.first_us) if c.first_us is not None else None,
        last_activity=from_us(c.last_us) if c.last_us is not None else None,
        time_on_task_s=tot_us / m.US,
        error_quotient=eq,
        repeated_error_density=red,
        longest_repeat=streak,
        paste_like=c.paste_like,
        first_save_near_final=near_final,
        flags=flags,
    )


def assignment_figures(
    conn: Connection,
    cls: int,
    asg: int,
    p: Params,
    student_pk: int | None = None,
    *,
    use_cache: bool = True,
) -> tuple[list[StudentFigures], ClassStats]:
    """Figures for every student of the class (or one), with class-wide statistics: from
    the cache at the default thresholds, else (and with ``use_cache=False``) from every
    row of the assignment."""
    if use_cache and cacheable(p):
        return cached_figures(conn, cls, asg, p, student_pk)
    roster = q.students(conn, cls)
    counts = q.counts(conn, asg, student_pk)
    tot = q.time_on_task(conn, asg, p.idle_us)  # whole class: the median needs everyone
    pastes = q.paste_counts(conn, asg, p.paste_bytes, int(p.paste_seconds * m.US), student_pk)
    near: Counter[int] = Counter(
        f.student_pk
        for f in q.first_and_final_sizes(conn, asg, student_pk)
        if m.first_save_near_final(f.first_size, f.final_size, p.first_save_ratio)
    )
    for b in q.builds(conn, asg, student_pk):
        counts.setdefault(b.student_pk, q.Counts()).compiles.append(q.as_compile(b))
    for pk, n in pastes.items():
        counts.setdefault(pk, q.Counts()).paste_like = n
    median_us = m.median([v for pk, v in tot.items()])
    started = len(tot)
    rows = [
        student_figures(sid, counts.get(pk, q.Counts()), tot.get(pk, 0), near[pk], median_us, p)
        for pk, sid in roster
        if student_pk is None or pk == student_pk
    ]
    stats = ClassStats(
        students=len(roster),
        started=started,
        median_time_on_task_s=median_us / m.US if median_us is not None else None,
    )
    return rows, stats


def cacheable(p: Params) -> bool:
    """The cache holds time on task and paste-like saves at the default thresholds; the
    other thresholds apply to cached values at read time."""
    d = Params()
    return (p.idle_minutes, p.paste_bytes, p.paste_seconds) == (
        d.idle_minutes,
        d.paste_bytes,
        d.paste_seconds,
    )


def cached_figures(
    conn: Connection, cls: int, asg: int, p: Params, student_pk: int | None = None
) -> tuple[list[StudentFigures], ClassStats]:
    """assignment_figures from the per-student cache (analytics_cache), same results."""
    roster = q.students(conn, cls)
    states = cache.refresh(conn, cls, asg)
    median_us = m.median([s.tot_us for s in states.values()])
    empty = cache.State()
    rows = []
    for pk, sid in roster:
        if student_pk is not None and pk != student_pk:
            continue
        s = states.get(pk, empty)
        compiled = (s.error_quotient(), s.repeated_error_density(), s.longest_repeat()[1])
        near = s.near_final(p.first_save_ratio)
        rows.append(student_figures(sid, s.counts(), s.tot_us, near, median_us, p, compiled))
    stats = ClassStats(
        students=len(roster),
        started=len(states),
        median_time_on_task_s=median_us / m.US if median_us is not None else None,
    )
    return rows, stats
