"""Benchmark g: 500 saves/s sustained across 1,000 student directories for 60 s: 0 lost.

1,000 workspaces ``os-1-2026NNNNN/hw1`` on a tmpfs; a writer paced at RATE saves/s goes
round-robin over them (each file is saved every 1,000 / RATE s — 2 s at 500/s — so every
save is its own version, well past filemon's 200 ms settle), each save a truncate-write
with unique content. A real ``watcher-filemon`` sends to a real ``watcher-backend``
(temp SQLite, pinned to CPU 0). After the writer stops, the snapshots in the backend's
database are counted until they reach the number written (or 180 s pass): lost = written
− stored.

Knobs: BENCH_FM_RATE (500), BENCH_FM_SECONDS (60), BENCH_FM_DIRS (1000).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

from agentlib import Agent, histogram_quantile, tmpfs_dir
from benchlib import (
    CLK_TCK,
    Backend,
    CpuMeter,
    Metric,
    Result,
    fmt,
    log,
    run_bench,
    target_check,
)

RATE = int(os.environ.get("BENCH_FM_RATE", "500"))
SECONDS = int(os.environ.get("BENCH_FM_SECONDS", "60"))
DIRS = int(os.environ.get("BENCH_FM_DIRS", "1000"))


def stored(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM snapshots").fetchone()[0])
    finally:
        con.close()


def body(result: Result) -> None:
    with tmpfs_dir("watcher-bench-fms-") as tmp, Backend("filemon-sustained") as be:
        root = tmp / "codes"
        files = []
        for i in range(DIRS):
            hw = root / f"os-1-2026{i:05d}" / "hw1"
            hw.mkdir(parents=True)
            files.append(hw / "main.c")
        env = {
            "WATCH_ROOT": str(root),
            "SNAPSHOT_BASE": str(tmp / "snap"),
            "API_SERVER": be.url,
            "WATCHER_AGENT_TOKEN": be.agent_token,
        }
        with Agent("filemon", env, tmp) as fm:
            fm.wait_log("filemon ready")
            total = RATE * SECONDS
            log(f"writing {total:,} saves at {RATE}/s over {DIRS} directories for {SECONDS} s")
            late_max = 0.0
            fm_cpu0 = fm.cpu_ticks()
            with CpuMeter(be.pid) as meter:
                t0 = time.monotonic()
                for n in range(total):
                    due = t0 + n / RATE
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    else:
                        late_max = max(late_max, now - due)
                    with files[n % DIRS].open("wb") as fh:
                        text = f"/* save {n} */\nint main(void) {{ return {n % 256}; }}\n"
                        fh.write(text.encode())
                write_s = time.monotonic() - t0
                fm_cpu = (fm.cpu_ticks() - fm_cpu0) / CLK_TCK / write_s
                rss = fm.rss_mb()
                deadline = time.monotonic() + 180
                got = 0
                while time.monotonic() < deadline:
                    got = stored(be.db_path())
                    if got >= total:
                        break
                    time.sleep(0.5)
                drain_s = time.monotonic() - t0 - write_s
            time.sleep(2.0)  # a duplicate or a late straggler would show now
            got = stored(be.db_path())
            m = fm.metrics()
    lost = max(0, total - got)
    cap_p99 = histogram_quantile(m, "watcher_filemon_capture_latency_seconds", 0.99)
    overflows = m.get("watcher_filemon_overflows_total", 0.0)
    result.metrics += [
        Metric("saves written", total, "", f"{RATE}/s x {SECONDS} s"),
        Metric("achieved write rate", round(total / write_s, 1), "saves/s", f">= {RATE}",
               target_check(total / write_s, ">=", RATE * 0.98)),
        Metric("versions lost", lost, "", "= 0", lost == 0),
        Metric("versions stored beyond those written (duplicates)", max(0, got - total), "", "= 0",
               got <= total),
        Metric("filemon CPU while writing", round(fm_cpu * 100, 1), "% of a core"),
        Metric("filemon RSS at the end of writing", round(rss, 1), "MB"),
        Metric("backend caught up after the writer stopped", round(drain_s, 1), "s"),
    ]  # fmt: skip
    result.server_cpu_cores = round(meter.server_cores, 2)
    result.other_cpu_cores = round(meter.other_cores, 2)
    result.notes += [
        f"{DIRS} workspaces x 1 file, each saved every {DIRS / RATE:.1f} s (truncate-write,"
        f" unique content); the writer (unpinned) was at most {late_max * 1000:.0f} ms"
        " behind its schedule; tmpfs workspace root; filemon unpinned",
        f"filemon capture latency p99 (its histogram, settle included, bucket bound):"
        f" {fmt(None if cap_p99 is None else cap_p99 * 1000)} ms; inotify overflows:"
        f" {overflows:.0f}; stored {got:,} of {total:,}",
    ]


if __name__ == "__main__":
    sys.exit(
        run_bench("g", f"filemon: {RATE} saves/s across {DIRS:,} directories for {SECONDS} s",
                  body)
    )  # fmt: skip
