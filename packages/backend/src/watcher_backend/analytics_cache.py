"""Exact per-(assignment, student) analytics at the default thresholds, kept by the read side.

Computing the class dashboard from every row (300 students × 2,000 saves) took seconds per
request. Instead, each student's figures live in ``analytics_cache`` with the rows they
cover: per source table (snapshots, runs, cells) the number of rows and the highest id.
``refresh`` compares those counts with the current ones and, for a student who changed,

* folds in the rows with a higher id and a time at or after the latest activity already
  counted, when they are exactly the rows added (their number closes the gap between the
  counts) — time on task, EQ/RED strings, paste-like gaps and first/final sizes are
  running sums over time order, so appending keeps them exact;
* otherwise (a late event older than what was counted, a row removed, ids committed out
  of order) recomputes that student from all of their rows.

Counts and rows are read in one snapshot (SQLite's read transaction, PostgreSQL's
REPEATABLE READ), so "exactly the rows added" is a sound test.

Both paths run the same fold (``_fold``) over rows in time order, so a cached figure is the
figure the definitions in docs/analytics.md give (tests compare the two after further
ingest, late events and deletes/renames). Only the default thresholds are cached; other
``Params`` are computed from the rows (``analytics_figures``).

Snapshot counts come from ``assignment_student_stats`` (kept in the snapshot insert's
transaction); run and cell counts from their (student, assignment) indexes.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import operator
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    Select,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

from watcher_backend import analytics_metrics as m
from watcher_backend import analytics_sql as q
from watcher_backend.db.models import Base
from watcher_backend.db.tables import FILES, NOTEBOOK_CELLS, RUNS, SNAPSHOTS, STUDENTS

log = logging.getLogger(__name__)

CACHE: Table = Base.metadata.tables["analytics_cache"]
STATS: Table = Base.metadata.tables["assignment_student_stats"]
# Bump when State or the fold changes: older rows are then recomputed.
VERSION = 1
IDLE_US = m.DEFAULT_IDLE_S * m.US
PASTE_BYTES = m.DEFAULT_PASTE_BYTES
PASTE_US = m.DEFAULT_PASTE_SECONDS * m.US
HEAT_KINDS = ("save", "build", "run", "cell")


@dataclass
class State:
    """One student's figures in one assignment, and what the next rows continue from.

    JSON-stored: ints, floats (exact through JSON), strings, lists and dicts only."""

    saves: int = 0
    # file id → [first size, last ts, last id, last size] (by (ts, id) order)
    files: dict[str, list[int]] = field(default_factory=dict)
    paste_like: int = 0
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
    acts: int = 0  # activity events (saves, runs of any kind, cells)
    act_last: int | None = None  # latest activity time counted
    tot_us: int = 0
    # compile sequence (known outcomes only), as analytics_metrics walks it
    known: int = 0
    eq_total: float = 0.0
    prev_ok: bool | None = None
    prev_err: str | None = None
    cur_err: str | None = None
    cur_len: int = 0
    red_closed: float = 0.0
    best_err: str | None = None
    best_len: int = 0
    build_last_us: int | None = None
    # error template → [error diagnostics, builds with it, first message]
    errors: dict[str, list[Any]] = field(default_factory=dict)
    # kind → {str(weekday * 24 + hour): events}, Korea time
    heat: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def load(cls, raw: dict[str, Any]) -> State:
        return cls(**raw)

    def dump(self) -> dict[str, Any]:
        """The JSON-able fields, not copied (asdict deep-copies every nested list)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    # ---- figures ------------------------------------------------------------------------

    def error_quotient(self) -> float | None:
        return None if self.known < 2 else self.eq_total / (self.known - 1)

    def repeated_error_density(self) -> float:
        open_ = (self.cur_len - 1) ** 2 / self.cur_len if self.cur_len > 1 else 0
        return self.red_closed + open_

    def longest_repeat(self) -> tuple[str | None, int]:
        if self.cur_len > self.best_len:
            return self.cur_err, self.cur_len
        return self.best_err, self.best_len

    def near_final(self, ratio: float = m.DEFAULT_FIRST_SAVE_RATIO) -> int:
        return sum(1 for f in self.files.values() if m.first_save_near_final(f[0], f[3], ratio))

    def counts(self) -> q.Counts:
        return q.Counts(
            saves=self.saves,
            files=len(self.files),
            builds=self.builds,
            builds_ok=self.builds_ok,
            builds_failed=self.builds_failed,
            runs=self.runs,
            crashes=self.crashes,
            signalled=self.signalled,
            cells=self.cells,
            cell_errors=self.cell_errors,
            first_us=self.first_us,
            last_us=self.last_us,
            time_on_task_us=self.tot_us,
            paste_like=self.paste_like,
        )

    # ---- folding rows in ----------------------------------------------------------------

    def _seen(self, lo: int, hi: int) -> None:
        self.first_us = lo if self.first_us is None else min(self.first_us, lo)
        self.last_us = hi if self.last_us is None else max(self.last_us, hi)

    def _heat(self, kind: str, times: Sequence[int]) -> None:
        """Count sorted times per Korea-time hour: one bisection per hour with activity,
        then bucket as weekday * 24 + hour (1970-01-01 was a Thursday, weekday 3)."""
        h = self.heat.setdefault(kind, {}) if times else {}
        i, n = 0, len(times)
        while i < n:
            hour = (times[i] + q.KST_OFFSET_US) // q.HOUR_US
            j = bisect.bisect_left(times, (hour + 1) * q.HOUR_US - q.KST_OFFSET_US, i)
            key = str(((hour // 24 + 3) % 7) * 24 + hour % 24)
            h[key] = h.get(key, 0) + j - i
            i = j

    def _compile(self, c: m.Compile) -> None:
        """One more compile, as error_quotient / error_strings / longest_repeat see it."""
        if c.ok is None:
            return
        if self.known:
            score = 0
            if not self.prev_ok and not c.ok:
                score += 8
                if self.prev_err == c.first_error:
                    score += 3
            self.eq_total += score / 11
        self.known += 1
        self.prev_ok, self.prev_err = c.ok, c.first_error
        if c.ok:
            self._close()
        elif self.cur_len and c.first_error == self.cur_err:
            self.cur_len += 1
        else:
            self._close()
            self.cur_err, self.cur_len = c.first_error, 1

    def _close(self) -> None:
        n = self.cur_len
        if n > 1:
            self.red_closed += (n - 1) ** 2 / n
        if n > self.best_len:
            self.best_err, self.best_len = self.cur_err, n
        self.cur_err, self.cur_len = None, 0


# Row shapes fetched per student (time order).
RUN_COLS = (
    RUNS.c.id,
    RUNS.c.category,
    RUNS.c.start_us,
    RUNS.c.end_us,
    RUNS.c.exit_code,
    RUNS.c.signal,
    cast(RUNS.c.diagnostics, Text),  # JSON text: decoded only when not empty
)
CELL_COLS = (NOTEBOOK_CELLS.c.id, NOTEBOOK_CELLS.c.ts_us, NOTEBOOK_CELLS.c.status)


# The same few messages recur across a class's builds: normalise each once.
_template = functools.lru_cache(maxsize=4096)(m.error_template)


def _gaps(xs: Sequence[int]) -> Iterator[int]:
    return map(operator.sub, xs[1:], xs[:-1])


def _fold_files(st: State, snaps: Sequence[Any]) -> None:
    """Per file, in (time, id) order: first size, last (ts, id, size), and the saves that
    grew the file by >= PASTE_BYTES within PASTE_US of its previous save."""
    ids, fids, tss, sizes = (list(c) for c in zip(*snaps, strict=True))
    if fids.count(fids[0]) == len(fids):  # one file: its columns as they are
        groups: Iterable[tuple[int, list[int]]] = [(fids[0], list(range(len(fids))))]
    else:
        order = sorted(range(len(fids)), key=fids.__getitem__)  # stable: keeps time order
        groups = ((k, list(g)) for k, g in itertools.groupby(order, key=fids.__getitem__))
    for fid, idx in groups:
        if len(idx) == len(tss):
            f_ts, f_size = tss, sizes
        else:
            f_ts, f_size = [tss[i] for i in idx], [sizes[i] for i in idx]
        f = st.files.get(str(fid))
        if f is None:
            f = st.files[str(fid)] = [f_size[0], 0, 0, 0]
        else:  # continue from the last save counted
            f_ts.insert(0, f[1])
            f_size.insert(0, f[3])
        grew = map(operator.ge, _gaps(f_size), itertools.repeat(PASTE_BYTES))
        soon = map(operator.le, _gaps(f_ts), itertools.repeat(PASTE_US))
        st.paste_like += sum(map(operator.and_, grew, soon))
        f[1], f[2], f[3] = f_ts[-1], ids[idx[-1]], f_size[-1]


def _fold(st: State, snaps: Sequence[Any], runs: Sequence[Any], cells: Sequence[Any]) -> None:
    """Add rows (each list in (time, id) order, all at or after ``st.act_last``).

    Whole columns go through C-level builtins (min/max, Counter, sorted, map); only the
    order-dependent parts (per-file gaps, the compile sequence) walk row by row."""
    snap_ts = [r[2] for r in snaps]
    run_start = [r[2] for r in runs]
    cell_ts = [r[1] for r in cells]
    if snaps:
        st.saves += len(snaps)
        st._seen(snap_ts[0], snap_ts[-1])
        st._heat("save", snap_ts)
        _fold_files(st, snaps)
    if runs:
        st._seen(run_start[0], max(r[3] if r[3] is not None else r[2] for r in runs))
    builds, plain = [], []
    for row in runs:
        if row[1] == q.COMPILE_CATEGORY:
            builds.append(row)
        elif row[1] in q.RUN_CATEGORIES:
            plain.append(row)
    st._heat("build", [r[2] for r in builds])
    st._heat("run", [r[2] for r in plain])
    for _rid, _cat, start, _end, exit_code, sig, text in builds:
        st.builds += 1
        ok = q._outcome(exit_code, sig)
        if ok is True:
            st.builds_ok += 1
        elif ok is False:
            st.builds_failed += 1
        st.build_last_us = start
        errs = q.errors_of(orjson.loads(text) or []) if text and text != "[]" else []
        # as analytics_sql.as_compile: a failed compile's type is its first error's template
        first = None
        if ok is False:
            first = _template(str(errs[0].get("message", ""))) if errs else q.NO_DIAGNOSTIC
        st._compile(m.Compile(start, ok, first))
        seen: set[str] = set()
        for d in errs:
            msg = str(d.get("message", ""))
            tpl = _template(msg)
            e = st.errors.setdefault(tpl, [0, 0, msg])
            e[0] += 1
            if tpl not in seen:
                seen.add(tpl)
                e[1] += 1
    st.runs += len(plain)
    signals = [r[5] for r in plain if r[5] is not None]
    st.signalled += len(signals)
    st.crashes += sum(1 for sig in signals if sig in m.CRASH_SIGNALS)
    if cells:
        st.cells += len(cells)
        st.cell_errors += sum(1 for r in cells if r[2] == "error")
        st._seen(cell_ts[0], cell_ts[-1])
        st._heat("cell", cell_ts)
    # time on task: Σ min(gap, idle) over all activity times, continuing from the last one
    times = sorted(itertools.chain(snap_ts, run_start, cell_ts))  # sorted runs: ~linear
    if not times:
        return
    if st.act_last is not None:
        st.tot_us += min(times[0] - st.act_last, IDLE_US)
    # Σ min(gap, idle) = the whole span minus what the long gaps exceed idle by (builtin
    # min() per gap cost ~1 µs; filtering the few long gaps runs at C speed)
    long_gaps = list(filter(IDLE_US.__lt__, _gaps(times)))
    st.tot_us += times[-1] - times[0] - (sum(long_gaps) - IDLE_US * len(long_gaps))
    st.acts += len(times)
    st.act_last = times[-1]


@dataclass
class _Row:
    snap_n: int = 0
    snap_max_id: int = 0
    run_n: int = 0
    run_max_id: int = 0
    cell_n: int = 0
    cell_max_id: int = 0
    state: State = field(default_factory=State)

    def counts(self) -> tuple[int, int, int]:
        return self.snap_n, self.run_n, self.cell_n


def _fetch_sql() -> tuple[Select[Any], ...]:
    """Rows of one student with an id above ``after`` and a time from ``since`` on: the
    (assignment, student, time) indexes seek straight to the new rows. A late row (older
    than ``since``) is left out, so the counts do not add up and the student is
    recomputed (``_update``)."""
    s, r, c = SNAPSHOTS.c, RUNS.c, NOTEBOOK_CELLS.c
    asg, spk = bindparam("asg", type_=Integer), bindparam("spk", type_=Integer)
    after, since = bindparam("after", type_=BigInteger), bindparam("since", type_=BigInteger)
    return (
        select(*RUN_COLS)
        .where(r.student_pk == spk, r.assignment_id == asg, r.start_us >= since, r.id > after)
        .order_by(r.start_us, r.id),
        select(*CELL_COLS)
        .where(c.assignment_id == asg, c.student_pk == spk, c.ts_us >= since, c.id > after)
        .order_by(c.ts_us, c.id),
        # Snapshots without file_id: index-only on (assignment, student, ts, size); a
        # student's only file owns them all, else (file, ts) gives each file's ids.
        select(s.id, s.ts_us, s.size)
        .where(s.assignment_id == asg, s.student_pk == spk, s.ts_us >= since, s.id > after)
        .order_by(s.ts_us, s.id),
        select(FILES.c.id).where(FILES.c.student_pk == spk, FILES.c.assignment_id == asg),
        select(s.id).where(
            s.file_id == bindparam("fid", type_=Integer), s.ts_us >= since, s.id > after
        ),
    )


FETCH = _fetch_sql()
RUNS_Q, CELLS_Q, SNAPS_Q, FILES_Q, FILE_SNAPS_Q = range(len(FETCH))
_compiled: dict[str, list[SQLCompiler]] = {}


def _sql_compiler(c: Any) -> SQLCompiler:
    assert isinstance(c, SQLCompiler)
    return c


def _raw(conn: Connection, which: int, params: dict[str, int]) -> list[Any]:
    """Plain tuples from the driver: a class's snapshot rows number 10^5-10^6, and
    SQLAlchemy's Row objects (and compiling the statement per student) doubled the cost."""
    dialect = conn.dialect
    if dialect.name not in _compiled:
        _compiled[dialect.name] = [_sql_compiler(stmt.compile(dialect=dialect)) for stmt in FETCH]
    compiled = _compiled[dialect.name][which]
    values = compiled.construct_params(params)
    args: Any = (
        tuple(values[k] for k in compiled.positiontup or ()) if compiled.positional else values
    )
    cur = conn.connection.cursor()
    try:
        cur.execute(compiled.string, args)
        return list(cur.fetchall())
    finally:
        cur.close()


def _fetch(
    conn: Connection, asg: int, spk: int, after: _Row
) -> tuple[Sequence[Any], Sequence[Any], Sequence[Any]]:
    since = after.state.act_last if after.state.act_last is not None else -(2**62)
    key = {"asg": asg, "spk": spk, "since": since}
    runs = _raw(conn, RUNS_Q, {**key, "after": after.run_max_id})
    cells = _raw(conn, CELLS_Q, {**key, "after": after.cell_max_id})
    # (id, file_id, ts, size) from the covering indexes: fetching file_id with each row
    # was one table lookup per snapshot, half the cost of a first fill
    lite = _raw(conn, SNAPS_Q, {**key, "after": after.snap_max_id})
    if not lite:
        return [], runs, cells
    files = [f for (f,) in _raw(conn, FILES_Q, key)]
    if len(files) == 1:
        return [(i, files[0], t, size) for i, t, size in lite], runs, cells
    owner: dict[int, int] = {}
    for f in files:
        for (i,) in _raw(
            conn, FILE_SNAPS_Q, {"fid": f, "since": since, "after": after.snap_max_id}
        ):
            owner[i] = f
    return [(i, owner[i], t, size) for i, t, size in lite], runs, cells


_first = operator.itemgetter(0)  # a row's id


def _grown(old: _Row, snaps: Sequence[Any], runs: Sequence[Any], cells: Sequence[Any]) -> _Row:
    return _Row(
        old.snap_n + len(snaps),
        max(old.snap_max_id, max(map(_first, snaps), default=0)),
        old.run_n + len(runs),
        max(old.run_max_id, max(map(_first, runs), default=0)),
        old.cell_n + len(cells),
        max(old.cell_max_id, max(map(_first, cells), default=0)),
        old.state,
    )


def _update(conn: Connection, asg: int, spk: int, old: _Row | None, now: tuple[int, ...]) -> _Row:
    """The student's row brought up to the counts ``now`` (read in the same snapshot)."""
    if old is not None:
        snaps, runs, cells = _fetch(conn, asg, spk, old)
        new = _grown(old, snaps, runs, cells)
        # Exactly the rows added since, all at or after the last activity counted: fold
        # them in. Anything else (a late row, a row gone, ids out of order): recompute.
        if new.counts() == now:
            st = State.load(asdict(old.state))  # a copy: the old row stays as read
            _fold(st, snaps, runs, cells)
            new.state = st
            return new
    snaps, runs, cells = _fetch(conn, asg, spk, _Row())
    new = _grown(_Row(), snaps, runs, cells)
    _fold(new.state, snaps, runs, cells)
    return new


_locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
_locks_guard = threading.Lock()


def refresh(conn: Connection, cls: int, asg: int) -> dict[int, State]:
    """Every student of the class with rows in the assignment → their current State
    (students without any row are absent). Stores what changed.

    One refresh per assignment at a time in this process: the dashboard's requests (and
    several instructors) arriving together on a cold cache would otherwise each compute
    it. The waiting ones then read what the first stored, on a connection of their own
    (``conn``'s transaction may predate that)."""
    with _locks_guard:
        lock = _locks[asg]
    with lock, conn.engine.connect() as own:
        if own.dialect.name == "postgresql":  # counts and rows from one snapshot
            own = own.execution_options(isolation_level="REPEATABLE READ")
        return _refresh(own, cls, asg)[0]


def warm(engine: Engine, cls: int, asg: int, between: Callable[[], bool]) -> tuple[int, bool]:
    """``refresh`` for the background warmer (analytics_warm): the same lock and the same
    computation; ``between()`` runs after each student brought up to date (it yields the
    GIL) and returning False stops early — the students done so far are stored, the rest
    are left to the next refresh. (students updated, whether it went through them all)"""
    with _locks_guard:
        lock = _locks[asg]
    with lock, engine.connect() as own:
        if own.dialect.name == "postgresql":
            own = own.execution_options(isolation_level="REPEATABLE READ")
        _, n, done = _refresh(own, cls, asg, between)
        return n, done


def _refresh(
    conn: Connection, cls: int, asg: int, between: Callable[[], bool] | None = None
) -> tuple[dict[int, State], int, bool]:
    """(states, students updated, whether every student was looked at)."""
    in_class = select(STUDENTS.c.id).where(STUDENTS.c.class_id == cls)
    cached: dict[int, _Row] = {}
    for c in conn.execute(select(CACHE).where(CACHE.c.assignment_id == asg)).mappings():
        if c["version"] != VERSION:
            continue
        cached[int(c["student_pk"])] = _Row(
            int(c["snap_n"]),
            int(c["snap_max_id"]),
            int(c["run_n"]),
            int(c["run_max_id"]),
            int(c["cell_n"]),
            int(c["cell_max_id"]),
            State.load(c["state"]),
        )
    now: dict[int, list[int]] = {}
    for i, stmt in enumerate(
        (
            select(STATS.c.student_pk, STATS.c.snapshots).where(STATS.c.assignment_id == asg),
            select(RUNS.c.student_pk, func.count())
            .where(RUNS.c.student_pk.in_(in_class), RUNS.c.assignment_id == asg)
            .group_by(RUNS.c.student_pk),
            select(NOTEBOOK_CELLS.c.student_pk, func.count())
            .where(NOTEBOOK_CELLS.c.assignment_id == asg)
            .group_by(NOTEBOOK_CELLS.c.student_pk),
        )
    ):
        for spk, n in conn.execute(stmt).all():
            now.setdefault(int(spk), [0, 0, 0])[i] = int(n)
    out: dict[int, State] = {}
    changed: dict[int, _Row] = {}
    done = False
    for spk in set(now) | set(cached):
        counts = tuple(now.get(spk, (0, 0, 0)))
        old = cached.get(spk)
        if old is not None and counts == old.counts():
            row = old
        else:
            row = changed[spk] = _update(conn, asg, spk, old, counts)
            if between is not None and not between():
                break
        if row.snap_n or row.run_n or row.cell_n:
            out[spk] = row.state
    else:
        done = True
    if changed:
        _store(conn, asg, changed)
    return out, len(changed), done


def _store(conn: Connection, asg: int, rows: dict[int, _Row]) -> None:
    values = [
        {
            "assignment_id": asg,
            "student_pk": spk,
            "version": VERSION,
            "snap_n": r.snap_n,
            "snap_max_id": r.snap_max_id,
            "run_n": r.run_n,
            "run_max_id": r.run_max_id,
            "cell_n": r.cell_n,
            "cell_max_id": r.cell_max_id,
            "state": r.state.dump(),
        }
        for spk, r in rows.items()
    ]
    try:
        with conn.engine.begin() as w:
            w.execute(
                delete(CACHE).where(
                    CACHE.c.assignment_id == asg, CACHE.c.student_pk.in_(list(rows))
                )
            )
            w.execute(insert(CACHE), values)
    except DBAPIError as exc:  # another process stored the same rows first: theirs stay
        log.debug("analytics cache not stored: %s", type(exc).__name__)
