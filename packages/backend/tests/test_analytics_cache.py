"""The analytics cache gives exactly what computing from every row gives: after the first
fill, after further ingest (folded in incrementally), after late events older than what
was counted (the student is recomputed), after deletes/renames, and after rows vanish.

The reference is computed here from all rows with the pure metrics (analytics_metrics)
and the row-level SQL (analytics_sql), independently of the cache (SQLite and PostgreSQL).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, delete, select
from starlette.testclient import TestClient

from watcher_backend import analytics_cache as cache
from watcher_backend import analytics_metrics as m
from watcher_backend import analytics_sql as q
from watcher_backend import analytics_warm, lookup
from watcher_backend.analytics_figures import Params, assignment_figures
from watcher_backend.app import create_app
from watcher_backend.config import Settings
from watcher_backend.db.tables import FILE_EVENTS, SNAPSHOTS
from watcher_backend.demo_data import EventFactory, diag
from watcher_common.timeutil import from_us

BASE = "/api/v1/classes/os-1/assignments/hw1"
T0 = datetime(2024, 3, 4, 0, 0, tzinfo=UTC)
STUDENTS = [f"2024{n:05d}" for n in range(6)]
ERRORS = [
    "‘x’ undeclared (first use in this function)",
    "‘y’ undeclared (first use in this function)",
    "expected ‘;’ before ‘return’",
    "expected ';' before '}' token",
    "too many arguments to function ‘f’; expected 2, have 3",
]


def events(f: EventFactory, rng: random.Random, start: float, n: int) -> list[dict[str, Any]]:
    """n random events per student (5 of 6 students) from ``start`` seconds on: saves of
    two files (some paste-like jumps), builds failing with repeated errors, runs ending by
    signals, notebook cells; gaps from seconds to over the idle threshold."""
    out = []
    for sid in STUDENTS[:-1]:  # the last student never starts
        t = start
        sizes = {"main.c": 0, "util.c": 0}
        for _ in range(n):
            t += rng.choice([1, 5, 20, 45, 90, 400, 900])
            ts = T0 + timedelta(seconds=t)
            k = rng.random()
            if k < 0.5:
                path = rng.choice(list(sizes))
                sizes[path] = max(1, sizes[path] + rng.choice([-50, 10, 40, 350, 900]))
                out.append(f.save(sid, "hw1", path, ts, bytes(rng.randrange(256) for _ in
                                                              range(sizes[path]))))  # fmt: skip
            elif k < 0.8:
                picked = rng.sample(ERRORS[:3], 1) if rng.random() < 0.7 else ERRORS[3:]
                diags = [diag(e, 3, 1) for e in picked] if rng.random() < 0.6 else []
                if rng.random() < 0.2:
                    diags.append(diag("unused variable ‘z’", 2, 1, severity="warning"))
                out.append(f.build(sid, "hw1", ts, diags))
            elif k < 0.92:
                sig = rng.choice([None, None, 11, 2, 6])
                out.append(f.run(sid, "hw1", ts, signal=sig))
            else:
                out.append(f.cell(sid, "hw1", ts, rng.randrange(5), ok=rng.random() < 0.7))
    return out


def reference(engine: Engine) -> dict[str, Any]:
    """Summary rows, error summary and heatmap computed from every row (no cache)."""
    with engine.connect() as conn:
        cls, asg = lookup.class_assignment(conn, "os-1", "hw1") or (0, 0)
        rows, stats = assignment_figures(conn, cls, asg, Params(), use_cache=False)
        roster = dict(q.students(conn, cls))
        builds = q.builds(conn, asg)
        heat = q.heatmap(conn, cls, [asg])
    occ: Counter[str] = Counter()
    in_builds: Counter[str] = Counter()
    who: defaultdict[str, set[int]] = defaultdict(set)
    example: dict[str, str] = {}
    per: defaultdict[int, list[q.BuildRow]] = defaultdict(list)
    for b in builds:
        per[b.student_pk].append(b)
        seen = set()
        for d in q.errors_of(b.diagnostics):
            tpl = m.error_template(d["message"])
            occ[tpl] += 1
            example.setdefault(tpl, d["message"])
            who[tpl].add(b.student_pk)
            seen.add(tpl)
        in_builds.update(seen)
    stuck = []
    for pk, seq in per.items():
        tpl, n = m.longest_repeat([q.as_compile(b) for b in seq])
        if n >= 2:
            stuck.append((roster[pk], tpl, n, from_us(seq[-1].start_us)))
    total = [[0] * 24 for _ in range(7)]
    for wd, hr, _kind, n in heat:
        total[wd][hr] += n
    return {
        "items": [r.model_dump(mode="json") for r in rows],
        "stats": stats.model_dump(mode="json"),
        "errors": (
            len(builds),
            sum(1 for b in builds if b.ok is False),
            [(t, example[t], n, in_builds[t], len(who[t])) for t, n in occ.most_common(50)],
            sorted(stuck, key=lambda s: (-s[2], s[0])),
        ),
        "heat": total,
    }


def when(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def served(c: TestClient) -> dict[str, Any]:
    s = c.get(f"{BASE}/summary", params={"limit": 1000}).json()
    e = c.get(f"{BASE}/errors", params={"limit": 50, "stuck_streak": 2}).json()
    h = c.get("/api/v1/classes/os-1/heatmap", params={"assignment": "hw1"}).json()
    return {
        "items": s["items"],
        "stats": s["stats"],
        "errors": (
            e["builds"],
            e["failed_builds"],
            [
                (t["template"], t["example"], t["occurrences"], t["builds"], t["students"])
                for t in e["top"]
            ],
            [
                (x["student_id"], x["template"], x["streak"], when(x["last_build"]))
                for x in e["stuck"]
            ],
        ),
        "heat": h["total"],
    }


def cached_rows(engine: Engine) -> dict[int, tuple[int, int, int]]:
    with engine.connect() as conn:
        rows = conn.execute(select(cache.CACHE.c.student_pk, cache.CACHE.c.snap_n,
                                   cache.CACHE.c.run_n, cache.CACHE.c.cell_n)).all()  # fmt: skip
    return {int(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


@pytest.fixture
def env(
    app: FastAPI, client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> tuple[TestClient, Engine, Any]:
    def post(evs: list[dict[str, Any]]) -> None:
        for i in range(0, len(evs), 500):
            r = client.post("/api/v1/events", json={"events": evs[i : i + 500]},
                            headers=agent_headers)  # fmt: skip
            assert r.status_code == 200, r.text
            assert {x["status"] for x in r.json()["results"]} == {"stored"}

    client.headers.update(reader_headers)
    # the roster: every student (the last one only ever appears through another assignment)
    f = EventFactory("os-1", prefix="roster")
    post([f.save(s, "hw0", "x.c", T0, b"x") for s in STUDENTS])
    return client, app.state.engine, post


def test_cache_is_exact_through_ingest_late_events_and_deletes(
    env: tuple[TestClient, Engine, Any],
) -> None:
    c, engine, post = env
    rng = random.Random(6)
    f = EventFactory("os-1", prefix="cache")
    post(events(f, rng, 0, 60))
    first = served(c)
    assert first == reference(engine)
    assert first["stats"]["started"] == 5 and len(cached_rows(engine)) == 5
    assert any(r["flags"] for r in first["items"])  # the data exercises the flags

    # further ingest, all later: folded into the cached rows
    before = cached_rows(engine)
    post(events(f, rng, 10 * 3600, 40))
    assert served(c) == reference(engine)
    after = cached_rows(engine)
    assert all(after[pk] > before[pk] for pk in before)

    # late, out-of-order events (older than everything counted) for two students
    late = [e for e in events(f, rng, -3600, 10) if e["student_id"] in STUDENTS[1:3]]
    post(late)
    assert served(c) == reference(engine)

    # deletes and renames are file events, not saves: figures unchanged, still exact
    t = T0 + timedelta(hours=20)
    later = t + timedelta(seconds=5)
    post([f.delete(STUDENTS[0], "hw1", "util.c", t),
          f.rename(STUDENTS[1], "hw1", "main.c", "src/main.c", t),
          f.save(STUDENTS[1], "hw1", "src/main.c", later, b"int x;\n" * 60)])  # fmt: skip
    assert served(c) == reference(engine)

    # rows removed behind the cache's back (maintenance): the count drops, recomputed
    with engine.begin() as conn:
        cls, asg = lookup.class_assignment(conn, "os-1", "hw1") or (0, 0)
        pk = lookup.student_pk(conn, cls, STUDENTS[2])
        ids = conn.execute(select(SNAPSHOTS.c.id).where(SNAPSHOTS.c.assignment_id == asg,
                                                        SNAPSHOTS.c.student_pk == pk)
                           .order_by(SNAPSHOTS.c.ts_us).limit(3)).scalars().all()  # fmt: skip
        conn.execute(delete(FILE_EVENTS).where(FILE_EVENTS.c.snapshot_id.in_(ids)))
        conn.execute(delete(SNAPSHOTS).where(SNAPSHOTS.c.id.in_(ids)))
    assert served(c) == reference(engine)

    # a cached row of an older format is recomputed, not trusted
    with engine.begin() as conn:
        conn.execute(cache.CACHE.update().values(version=0, state={}))
    assert served(c) == reference(engine)


def test_other_thresholds_bypass_the_cache(env: tuple[TestClient, Engine, Any]) -> None:
    c, engine, post = env
    post(events(EventFactory("os-1", prefix="p"), random.Random(7), 0, 50))
    params = {"idle_minutes": 2, "paste_bytes": 100, "paste_seconds": 60, "limit": 1000,
              "first_save_ratio": 0.5, "low_activity_ratio": 0.9, "stuck_streak": 2}  # fmt: skip
    got = c.get(f"{BASE}/summary", params=params).json()
    p = Params(2, 100, 60, 0.5, 0.9, 2)
    with engine.connect() as conn:
        cls, asg = lookup.class_assignment(conn, "os-1", "hw1") or (0, 0)
        rows, _ = assignment_figures(conn, cls, asg, p, use_cache=False)
    assert got["items"] == [r.model_dump(mode="json") for r in rows]
    # the cached thresholds-at-read-time (first_save_ratio, low_activity, stuck) agree too
    only_read_time = {k: params[k] for k in ("first_save_ratio", "low_activity_ratio",
                                             "stuck_streak", "limit")}  # fmt: skip
    got = c.get(f"{BASE}/summary", params=only_read_time).json()
    with engine.connect() as conn:
        rows, _ = assignment_figures(conn, cls, asg, Params(10, 300, 30, 0.5, 0.9, 2),
                                     use_cache=False)  # fmt: skip
    assert got["items"] == [r.model_dump(mode="json") for r in rows]


# ---- the background warmer (analytics_warm) ------------------------------------------------


@contextmanager
def warm_app(settings: Settings, idle_s: float) -> Iterator[tuple[TestClient, Engine, Any, Any]]:
    """The app with the warmer at ``idle_s`` (0: off); (client, engine, post, warmer)."""
    app = create_app(settings.model_copy(update={"analytics_warm_idle_s": idle_s}))
    with TestClient(app) as client:
        agent = {"Authorization": f"Bearer {settings.agent_tokens[0]}"}

        def post(evs: list[dict[str, Any]]) -> None:
            for i in range(0, len(evs), 500):
                r = client.post("/api/v1/events", json={"events": evs[i : i + 500]},
                                headers=agent)  # fmt: skip
                assert r.status_code == 200, r.text

        client.headers["Authorization"] = f"Bearer {settings.reader_tokens[0]}"
        f = EventFactory("os-1", prefix="roster")
        post([f.save(s, "hw0", "x.c", T0, b"x") for s in STUDENTS])
        yield client, app.state.engine, post, app.state.warmer


def whole_cache(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        t = cache.CACHE
        rows = conn.execute(select(t).order_by(t.c.assignment_id, t.c.student_pk)).all()
    return [tuple(r) for r in rows]


def wait_for(cond: Any, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_warmer_fills_the_cache_once_ingest_is_quiet(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=analytics_warm.__name__)
    with warm_app(settings, 0.5) as (c, engine, post, warmer):
        post(events(EventFactory("os-1", prefix="w"), random.Random(8), 0, 60))
        with engine.connect() as conn:
            mark = analytics_warm.high_water(conn)
        wait_for(lambda: warmer.warmed == mark)
        stored = whole_cache(engine)
        assert len(stored) == 6 + 5  # hw0's roster and hw1's five students
        # the requests find every student up to date: they read the warmer's rows as
        # they are (nothing recomputed, nothing stored) and those equal the computation
        # from every row
        assert served(c) == reference(engine)
        assert whole_cache(engine) == stored
        assert warmer.students >= 11
        text = c.get("/metrics").text
        assert 'watcher_analytics_warm_runs_total{result="done"}' in text
        assert "watcher_analytics_warm_students_total" in text
        logged = [r.getMessage() for r in caplog.records if r.name == analytics_warm.__name__]
        assert any("warm-up done" in msg for msg in logged)
        assert not any(sid in msg for sid in STUDENTS for msg in logged)

        # more, later rows: folded in by the next warm-up, still exact
        runs = warmer.completed
        post(events(EventFactory("os-1", prefix="w2"), random.Random(9), 10 * 3600, 20))
        wait_for(lambda: warmer.completed > runs)
        stored = whole_cache(engine)
        assert served(c) == reference(engine)
        assert whole_cache(engine) == stored


def test_warmer_waits_while_ingest_keeps_going(settings: Settings) -> None:
    with warm_app(settings, 1.5) as (c, engine, post, warmer):
        wait_for(lambda: warmer.completed == 1)  # the roster, once quiet
        f, rng = EventFactory("os-1", prefix="busy"), random.Random(10)
        t_end = time.monotonic() + 4.0
        k = 0
        while time.monotonic() < t_end:  # a batch every 0.2 s: never quiet for 1.5 s
            post(events(f, rng, k * 3600, 2))
            k += 1
            time.sleep(0.2)
        assert warmer.runs == 1 and len(whole_cache(engine)) == 6  # only the roster's
        wait_for(lambda: warmer.completed == 2)  # quiet again: warmed
        stored = whole_cache(engine)
        assert served(c) == reference(engine)
        assert whole_cache(engine) == stored


class _Slow(analytics_warm.AnalyticsWarmer):
    """Stands still after its first student until asked to stop (a long refresh)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_warm = threading.Event()

    def _after_student(self) -> None:
        self.in_warm.set()
        self._stop.wait(10)


def test_shutdown_while_warming_is_clean(settings: Settings) -> None:
    with warm_app(settings, 0) as (c, engine, post, app_warmer):
        assert app_warmer._thread is None  # 0 disables it
        post(events(EventFactory("os-1", prefix="s"), random.Random(11), 0, 40))
        warmer = _Slow(engine, 0.1, poll_s=0.02)
        warmer.start()
        assert warmer.in_warm.wait(10)
        t = time.monotonic()
        warmer.stop()
        assert time.monotonic() - t < 2.0 and warmer._thread is None
        # the one student done was stored, exact; the next request does the rest
        assert warmer.completed == 0 and warmer.students == 1
        assert len(whole_cache(engine)) == 1
        assert served(c) == reference(engine)
        assert len(whole_cache(engine)) == 1 + 5


def test_warm_idle_setting() -> None:
    assert Settings.from_env({}).analytics_warm_idle_s == 2.0
    assert Settings.from_env({"WATCHER_ANALYTICS_WARM_IDLE_S": "0"}).analytics_warm_idle_s == 0
    assert Settings.from_env({"WATCHER_ANALYTICS_WARM_IDLE_S": "0.5"}).analytics_warm_idle_s == 0.5
    with pytest.raises(ValueError, match="analytics_warm_idle_s"):
        Settings.from_env({"WATCHER_ANALYTICS_WARM_IDLE_S": "-1"})


class _Gated(analytics_warm.AnalyticsWarmer):
    """Holds still after its first student until ``go`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_warm, self.go = threading.Event(), threading.Event()

    def _after_student(self) -> None:
        self.in_warm.set()
        self.go.wait(10)


def test_a_request_during_a_warm_up_waits_and_reads_its_result(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    updates: Counter[int] = Counter()  # students computed, per assignment
    real_update = cache._update

    def counted(conn: Any, asg: int, *args: Any) -> Any:
        updates[asg] += 1
        return real_update(conn, asg, *args)

    monkeypatch.setattr(cache, "_update", counted)
    with warm_app(settings, 0) as (c, engine, post, _):
        c.get("/api/v1/classes/os-1/assignments/hw0/summary").raise_for_status()  # hw0: warm
        post(events(EventFactory("os-1", prefix="g"), random.Random(12), 0, 30))
        with engine.connect() as conn:
            cls, asg = lookup.class_assignment(conn, "os-1", "hw1") or (0, 0)
        warmer = _Gated(engine, 0.1, poll_s=0.02)
        warmer.start()
        try:
            assert warmer.in_warm.wait(10)  # in hw1, one student done, the lock held
            got: list[dict[int, cache.State]] = []

            def request() -> None:
                with engine.connect() as conn:
                    got.append(cache.refresh(conn, cls, asg))

            t = threading.Thread(target=request)
            t.start()
            t.join(0.5)
            assert t.is_alive() and not got  # waiting for the warm-up
            warmer.go.set()
            t.join(10)
            assert len(got) == 1 and len(got[0]) == 5
        finally:
            warmer.go.set()
            warmer.stop()
        assert warmer.completed == 1 and updates[asg] == 5  # each student computed once
        assert served(c) == reference(engine)
        assert updates[asg] == 5
