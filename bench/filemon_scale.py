"""Benchmark h: filemon at scale — RSS with 100k watched directories, start-up scan time
for 100k files.

A tmpfs tree of 1,000 workspaces x 10 assignments x 9 subdirectories (101,000
directories, every one watched) with one source file in each assignment and subdirectory
(100,000 files) is made *before* filemon starts, so its start-up scan finds 100k new
files and captures each as a ``reconciled`` version into its outbox. No backend: the
sender's target is a closed port (the outbox keeps everything), so this measures filemon
alone. Reported: the scan (watch + list, from filemon's own log line), start → ready,
start → every file captured in the outbox, RSS when ready and after all captures, peak
RSS. fs.inotify.max_user_watches is raised for the run only if it leaves less than 60k
spare watches (restored afterwards).

Knob: BENCH_FM_SCALE_WORKSPACES (1000; the tree is 101 dirs + 100 files per workspace).
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from agentlib import Agent, hwm_mb, sysctl, tmpfs_dir
from benchlib import Metric, Result, free_port, log, run_bench, target_check

WORKSPACES = int(os.environ.get("BENCH_FM_SCALE_WORKSPACES", "1000"))
HWS, SUBS = 10, 9


def body(result: Result) -> None:
    dirs = WORKSPACES * (1 + HWS + HWS * SUBS)
    files = WORKSPACES * HWS * (1 + SUBS)
    with tmpfs_dir("watcher-bench-fmscale-") as tmp:
        root = tmp / "codes"
        log(f"making {dirs:,} directories and {files:,} files on tmpfs")
        t0 = time.monotonic()
        for w in range(WORKSPACES):
            ws = root / f"os-1-2026{w:05d}"
            for h in range(1, HWS + 1):
                hw = ws / f"hw{h}"
                hw.mkdir(parents=True)
                main = f"/* {w} {h} */\nint main(void) {{ return 0; }}\n"
                (hw / "main.c").write_bytes(main.encode())
                for s in range(SUBS):
                    sub = hw / f"part{s}"
                    sub.mkdir()
                    (sub / "util.c").write_bytes(f"/* {w} {h} {s} */\nint f(void);\n".encode())
        log(f"tree made in {time.monotonic() - t0:.1f} s")
        limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
        need = dirs + 60_000  # what others on the machine (same uid) may hold too
        wanted = str(need + limit // 4) if limit < need else str(limit)
        with sysctl("fs/inotify/max_user_watches", wanted) as old_limit:
            env = {
                "WATCH_ROOT": str(root),
                "SNAPSHOT_BASE": str(tmp / "snap"),
                "API_SERVER": f"http://127.0.0.1:{free_port()}",  # nobody listens: outbox only
                "WATCHER_AGENT_TOKEN": "bench-no-backend",
                "FILEMON_RECONCILE_INTERVAL_S": "0",
            }
            with Agent("filemon", env, tmp) as fm:
                ready_s = fm.wait_log("filemon ready", timeout_s=900)
                rss_ready = fm.rss_mb()
                deadline = time.monotonic() + 900
                queued = 0.0
                while time.monotonic() < deadline:
                    queued = fm.metrics().get("watcher_outbox_events", 0.0)
                    if queued >= files:
                        break
                    time.sleep(0.5)
                captured_s = time.monotonic() - fm.started
                time.sleep(2.0)
                m = fm.metrics()
                rss_after = fm.rss_mb()
                peak = hwm_mb(fm.pid)
                text = fm.text()
    scan = re.search(r"startup scan: (\d+) directories, (\d+) files, \d+ missing, ([\d.]+)s", text)
    scan_s = float(scan.group(3)) if scan else None
    watches = m.get("watcher_filemon_watches", 0.0)
    degraded = "watch limit reached" in text
    result.metrics += [
        Metric("directories watched", watches, "", f">= {dirs:,}", watches >= dirs),
        Metric("RSS when ready (all watched, scan done)", round(rss_ready, 1), "MB", "<= 150",
               target_check(rss_ready, "<=", 150)),
        Metric("RSS after every file was captured", round(rss_after, 1), "MB", "<= 150",
               target_check(rss_after, "<=", 150)),
        Metric("peak RSS (VmHWM)", round(peak, 1), "MB"),
        Metric(f"start-up scan of {files:,} files (watch + list)", scan_s, "s"),
        Metric("start → ready", round(ready_s, 1), "s"),
        Metric(f"start → all {files:,} files captured in the outbox", round(captured_s, 1), "s"),
        Metric("files captured", queued, "", f"= {files:,}", queued >= files),
    ]  # fmt: skip
    result.notes += [
        f"tree: {WORKSPACES:,} workspaces x {HWS} assignments x {SUBS} subdirectories on tmpfs"
        f" ({dirs:,} directories, {files:,} files of ~40 B), made before filemon started;"
        f" outbox on tmpfs; no backend (the outbox holds every version);"
        f" max_user_watches {old_limit}"
        + (f" raised to {wanted} for the run" if wanted != old_limit else " (not changed)")
        + ("; WATCH LIMIT REACHED (degraded)" if degraded else ""),
        "scan line from filemon's log: " + (scan.group(0) if scan else "not found"),
    ]


if __name__ == "__main__":
    sys.exit(run_bench("h", "filemon: 100k watched directories, start-up scan of 100k files", body))
