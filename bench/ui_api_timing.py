"""The class dashboard's API calls timed in-process against a database built once.

Bench e (ui_pages.py) ingests 300 students x 2,000 saves through the API every run (many
minutes); this builds that data once into a SQLite file and then times the dashboard's
endpoints (summary, errors, one student's analytics, heatmap) against it, in-process (no
sockets), with wall and CPU time per call — CPU time holds on a busy machine.

  # once (same data as bench e; BENCH_UI_STUDENTS / BENCH_UI_SAVES size it)
  uv run --no-sync python bench/ui_api_timing.py build /tmp/h5
  # then, as often as needed (first call = first visit after ingest, then best of N)
  uv run --no-sync python bench/ui_api_timing.py time /tmp/h5
  # the same once the background warmer has refreshed the cache (the backend idle after
  # ingest: what an instructor opening the dashboard later gets); "time" turns it off
  BENCH_WARM=1 uv run --no-sync python bench/ui_api_timing.py time /tmp/h5
  # GROW_SAVES (20) more saves per student, later than the rest: the next visit folds them
  uv run --no-sync python bench/ui_api_timing.py grow /tmp/h5
  # the dashboard in headless Chromium (as bench e: cold page loads to a usable table);
  # BENCH_WARM=1 as above (waits for the warm-up's metric before the first load)
  uv run --no-sync python bench/ui_api_timing.py page /tmp/h5

Work on a copy when the first visit matters: the first request fills the analytics cache
stored in the database.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchlib import Backend, log

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
READER = "bench-reader-token"


def build(where: Path) -> None:
    import ui_pages

    where.mkdir(parents=True, exist_ok=True)
    if (where / "watcher.db").exists():
        raise SystemExit(f"{where}/watcher.db exists: remove it first")
    os.environ["BENCH_KEEP_TMP"] = "1"  # the database is the product here
    be = Backend("ui-api")
    be.tmp, be.log_path = where, where / "backend.log"
    with be:
        t = time.perf_counter()
        stored = asyncio.run(ui_pages.load(be, ui_pages.events()))
        log(f"ingested {stored:,} events in {time.perf_counter() - t:.1f}s into {where}")


def grow(where: Path) -> None:
    """GROW_SAVES more saves (a build after every 10th) per student, after all the others:
    what the dashboard's next visit folds in."""
    import json

    import ui_pages

    k_saves = int(os.environ.get("GROW_SAVES", "20"))
    tag = f"grow-{time.time_ns()}"

    def bodies() -> Iterator[bytes]:
        t0 = datetime.now(UTC)  # after everything before: folded in, not recomputed
        for s in range(ui_pages.STUDENTS):
            evs: list[dict[str, object]] = []
            for k in range(k_saves):
                ts = (t0 + timedelta(minutes=s, seconds=40 * k)).isoformat()
                body = ("int main(void) {\n" + ui_pages.LINE * (5 + k) + "}\n").encode()
                base = {"ts": ts, "student_id": ui_pages.student_id(s), "agent": "bench",
                        "agent_version": "0", "class_div": "os-1", "assignment": "hw1"}  # fmt: skip
                evs.append({**base, "event_id": f"{tag}-{s}-{k}", "kind": "file.snapshot",
                            "path": "main.c", "size": len(body),
                            "sha256": hashlib.sha256(body).hexdigest(),
                            "content_b64": base64.b64encode(body).decode()})  # fmt: skip
                if k % 10 == 9:
                    evs.append({**base, "event_id": f"{tag}-{s}-{k}-b", "kind": "process.run",
                                "run_kind": "build", "tool": "gcc", "exe": "/usr/bin/gcc",
                                "argv": ["gcc", "main.c"], "cwd": "/home/coder/project/hw1",
                                "start": ts, "end": ts, "exit_code": 0})  # fmt: skip
            yield json.dumps({"events": evs}).encode()

    os.environ["BENCH_KEEP_TMP"] = "1"
    be = Backend("ui-api")
    be.tmp, be.log_path = where, where / "backend.log"
    with be:
        stored = asyncio.run(ui_pages.load(be, bodies()))
        log(f"ingested {stored:,} more events into {where}")


def timing(where: Path) -> None:
    from fastapi.testclient import TestClient

    from watcher_backend.app import create_app
    from watcher_backend.config import Settings

    os.environ.update(
        DB_URL=f"sqlite:///{where}/watcher.db",
        WATCHER_READER_TOKEN=READER,
        LOG_LEVEL="WARNING",
    )
    import ui_pages

    sid = ui_pages.student_id(ui_pages.STUDENTS // 2)
    base = "/api/v1/classes/os-1/assignments/hw1"
    calls = {
        "summary (first 50, by student id)": f"{base}/summary?limit=50",
        "summary (first 50, by time on task desc)": f"{base}/summary?limit=50"
        "&sort=time_on_task_s&order=desc",
        "errors": f"{base}/errors?limit=10",
        "student analytics": f"{base}/students/{sid}/analytics",
        "heatmap (class)": "/api/v1/classes/os-1/heatmap",
        "heatmap (assignment)": "/api/v1/classes/os-1/heatmap?assignment=hw1",
    }
    warm = os.environ.get("BENCH_WARM") == "1"
    if not warm:  # the first call fills the cache itself
        os.environ["WATCHER_ANALYTICS_WARM_IDLE_S"] = "0"
    with TestClient(create_app(Settings.from_env())) as c:
        c.headers["Authorization"] = f"Bearer {READER}"
        if warm:
            warmer = c.app.state.warmer  # type: ignore[attr-defined]
            t, p = time.perf_counter(), time.process_time()
            while not warmer.completed:
                time.sleep(0.05)
            print(f"{'warm-up (idle wait + refresh)':45s} {time.perf_counter() - t:6.1f} s wall "
                  f"{time.process_time() - p:6.2f} s cpu")  # fmt: skip
        for name, url in calls.items():
            walls, cpus = [], []
            for _ in range(1 + ROUNDS):
                w, p = time.perf_counter(), time.process_time()
                r = c.get(url)
                cpus.append((time.process_time() - p) * 1000)
                walls.append((time.perf_counter() - w) * 1000)
                r.raise_for_status()
            print(
                f"{name:45s} first {walls[0]:8.1f} ms wall {cpus[0]:8.1f} ms cpu | "
                f"best of {ROUNDS} {min(walls[1:]):8.1f} ms wall {min(cpus[1:]):8.1f} ms cpu"
            )


def _wait_for_warm_up(be: Backend) -> None:
    """Until the backend's warmer has been through every assignment once (its metric)."""
    import urllib.request

    t = time.perf_counter()
    req = urllib.request.Request(f"{be.url}/metrics", headers={
        "Authorization": f"Bearer {be.reader_token}"})  # fmt: skip
    while True:
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
        if 'watcher_analytics_warm_runs_total{result="done"} 1.0' in text:
            break
        time.sleep(0.2)
    log(f"warm-up done {time.perf_counter() - t:.1f} s after login")


def page(where: Path) -> None:
    """Cold page loads of the class dashboard (ROUNDS + the first), as bench e times them."""
    import ui_pages
    from playwright.sync_api import expect, sync_playwright

    os.environ["BENCH_KEEP_TMP"] = "1"
    warm = os.environ.get("BENCH_WARM") == "1"
    if not warm:  # the first page load fills the cache itself
        os.environ["WATCHER_ANALYTICS_WARM_IDLE_S"] = "0"
    be = Backend("ui-api")
    be.tmp, be.log_path = where, where / "backend.log"
    n = min(50, ui_pages.STUDENTS)
    expect.set_options(timeout=120_000)  # the slow server this measures
    with be, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=ui_pages.CHROMIUM, args=ui_pages.ARGS)
        pg = browser.new_page(viewport={"width": 1360, "height": 900})
        pg.set_default_timeout(120_000)
        pg.goto(f"{be.url}/#/login")
        pg.get_by_test_id("token").fill(be.reader_token)
        pg.get_by_test_id("login-submit").click()
        expect(pg.get_by_test_id("class-card")).to_have_count(1)
        if warm:
            _wait_for_warm_up(be)
        times = []
        for _ in range(1 + ROUNDS):
            pg.goto("about:blank")
            t = time.perf_counter()
            pg.goto(f"{be.url}/#/c/os-1/hw1")
            pg.wait_for_function(
                "n => document.querySelectorAll('[data-testid=student-row]').length === n",
                arg=n,
                polling=10,
            )
            times.append((time.perf_counter() - t) * 1000)
            expect(pg.get_by_test_id("top-errors")).to_be_visible()  # the rest arrived too
        browser.close()
    rest = sorted(times[1:])
    print(f"dashboard: first {times[0]:.0f} ms, then median {rest[len(rest) // 2]:.0f} ms "
          f"(min {rest[0]:.0f}, max {rest[-1]:.0f}) over {ROUNDS} cold page loads")  # fmt: skip


if __name__ == "__main__":
    commands = {"build": build, "grow": grow, "time": timing, "page": page}
    if len(sys.argv) != 3 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](Path(sys.argv[2]))
