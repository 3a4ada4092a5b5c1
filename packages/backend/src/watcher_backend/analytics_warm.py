"""Keeps the analytics cache warm in the background, so the first dashboard visit after a
large ingest does not pay for folding it in (300 students × 2,000 saves: ~2 s of CPU).

A daemon thread polls the highest snapshot, run and cell ids (primary-key seeks). Once
they have not moved for ``idle_s`` seconds — ingest has gone quiet — it refreshes the
cache of every assignment with rows above the ids it last warmed to (at start: every
assignment), through ``analytics_cache.warm``: the requests' computation and lock, so a
request arriving meanwhile waits and then reads what was stored. It never changes a
result, only when it is computed.

It keeps out of ingest's way: it runs only when quiet, yields the GIL after each student,
and stops a warm-up (keeping the students done) as soon as the ids move again or the app
shuts down. Deletes move no id: their students are recomputed by the next request.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from watcher_backend import analytics_cache as cache
from watcher_backend.db.tables import ASSIGNMENTS, NOTEBOOK_CELLS, RUNS, SNAPSHOTS

log = logging.getLogger(__name__)

SOURCES = (SNAPSHOTS, RUNS, NOTEBOOK_CELLS)
Mark = tuple[int, int, int]  # highest snapshot, run and cell id
# While warming, look at the ids again at most this often (a query, not per student).
RECHECK_S = 0.2
# Warm-ups at least this long are logged at INFO.
INFO_AFTER_S = 1.0


def high_water(conn: Connection) -> Mark:
    """The highest id of each source table (each a primary-key seek)."""
    a, b, c = (int(conn.execute(select(func.max(t.c.id))).scalar() or 0) for t in SOURCES)
    return a, b, c


def changed_since(conn: Connection, mark: Mark | None) -> list[tuple[int, int]]:
    """(class, assignment) of the assignments with a row above ``mark`` (all when None);
    a range scan of the new rows' primary keys."""
    stmt = select(ASSIGNMENTS.c.class_id, ASSIGNMENTS.c.id).order_by(ASSIGNMENTS.c.id)
    if mark is not None:
        new = [
            select(t.c.assignment_id).where(t.c.id > m).distinct()
            for t, m in zip(SOURCES, mark, strict=True)
        ]
        ids = {int(a) for q in new for (a,) in conn.execute(q).all()}
        if not ids:
            return []
        stmt = stmt.where(ASSIGNMENTS.c.id.in_(sorted(ids)))
    return [(int(cls), int(asg)) for cls, asg in conn.execute(stmt).all()]


_registered: weakref.WeakKeyDictionary[CollectorRegistry, tuple[Counter, Counter]] = (
    weakref.WeakKeyDictionary()
)


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Counter]:
    """The warmer's counters in ``registry``, created once (an app's lifespan can run
    again, e.g. in tests, with the same registry)."""
    if registry not in _registered:
        _registered[registry] = (
            Counter(
                "watcher_analytics_warm_runs_total",
                "Background analytics cache warm-ups by result (done, interrupted)",
                ["result"],
                registry=registry,
            ),
            Counter(
                "watcher_analytics_warm_students_total",
                "Students whose analytics cache row a warm-up brought up to date",
                registry=registry,
            ),
        )
    return _registered[registry]


class AnalyticsWarmer:
    def __init__(
        self,
        engine: Engine,
        idle_s: float,
        *,
        registry: CollectorRegistry | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.engine = engine
        self.idle_s = idle_s
        self.poll_s = poll_s if poll_s is not None else min(1.0, max(0.05, idle_s / 4))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.warmed: Mark | None = None  # ids the cache was last warmed up to
        # written by the thread only; read by tests and the metrics
        self.runs = 0  # warm-ups started
        self.completed = 0  # warm-ups that went through every changed assignment
        self.students = 0  # students brought up to date
        self._metrics = _metrics(registry) if registry is not None else None

    def start(self) -> None:
        if self._thread is not None or self.idle_s <= 0:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="watcher-warm", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stops within one student's refresh (the current warm-up keeps what it stored)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        seen: Mark | None = None
        quiet_since = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                with self.engine.connect() as conn:
                    mark = high_water(conn)
                now = time.monotonic()
                if mark != seen:  # ingest is (still) going: wait for it to settle
                    seen, quiet_since = mark, now
                elif mark != self.warmed and now - quiet_since >= self.idle_s:
                    self._warm(mark)
            except SQLAlchemyError as exc:
                # e.g. the database restarting: the requests refresh the cache themselves
                log.debug("analytics warm-up skipped: %s", type(exc).__name__)
            except Exception:  # a bug: keep serving, the requests refresh the cache
                log.warning("analytics warm-up failed", exc_info=True)

    def _after_student(self) -> None:
        time.sleep(0)  # let the writer and the event loop have the GIL

    def _warm(self, mark: Mark) -> None:
        with self.engine.connect() as conn:
            todo = changed_since(conn, self.warmed)
        self.runs += 1
        t0, cpu0 = time.perf_counter(), time.thread_time()
        students = assignments = 0
        recheck = [time.monotonic() + RECHECK_S]

        def go_on() -> bool:
            if self._stop.is_set():
                return False
            if time.monotonic() >= recheck[0]:
                recheck[0] = time.monotonic() + RECHECK_S
                with self.engine.connect() as conn:
                    return high_water(conn) == mark  # moved: ingest is back
            return True

        def between() -> bool:
            self._after_student()
            return go_on()

        for cls, asg in todo:
            if not go_on():
                break
            n, whole = cache.warm(self.engine, cls, asg, between)
            students += n
            log.debug("analytics cache warmed: assignment %d, %d students", asg, n)
            if not whole:
                break
            assignments += 1
        else:
            self.warmed = mark
        done = self.warmed == mark
        self.students += students
        if done:
            self.completed += 1
        if self._metrics is not None:
            self._metrics[0].labels("done" if done else "interrupted").inc()
            self._metrics[1].inc(students)
        wall = time.perf_counter() - t0
        # INFO for the warm-ups that matter (a big ingest folded in); the small ones
        # between a live class's bursts only at DEBUG
        level = logging.INFO if wall >= INFO_AFTER_S else logging.DEBUG
        log.log(
            level,
            "analytics cache warm-up %s: %d of %d assignments, %d students, %.2f s (%.2f s CPU)",
            "done" if done else ("stopped" if self._stop.is_set() else "paused by ingest"),
            assignments,
            len(todo),
            students,
            wall,
            time.thread_time() - cpu0,
        )
