"""Benchmark d: the size of the backend's ``/metrics`` after many varied requests.

Sends N requests (default 100,000) with wrk: distinct student and file URLs, compat writes
with valid and invalid timestamps, random 404 paths, wrong methods, missing and unknown
tokens. Then counts the exposition's series (lines not starting with '#') and its bytes.
Target: < 300 series. Old system (recorded): 18.7 MB after 13k requests (per-path labels).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from pathlib import Path

from benchlib import (
    CLIENT_CPU,
    OLD,
    Backend,
    CpuMeter,
    Metric,
    Result,
    log,
    ratio_text,
    run_bench,
    target_check,
    taskset,
)

HERE = Path(__file__).resolve().parent
REQUESTS = int(os.environ.get("BENCH_METRICS_REQUESTS", "100000"))


def run_until_quota(cmd: list[str], env: dict[str, str]) -> str:
    """Run wrk until the Lua script reports its request quota, then SIGINT it for the summary."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("WRK_QUOTA_REACHED"):
            proc.send_signal(signal.SIGINT)
    if proc.wait() != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {''.join(lines)[-500:]}")
    return "".join(lines)


def body(result: Result) -> None:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk not installed (scripts/install-deps.sh installs it)")
    with Backend("metrics") as be:
        cmd = [
            *taskset(CLIENT_CPU),
            "wrk",
            "-t1",
            "-c16",
            "-d600s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "metrics_mix.lua"),
            be.url,
        ]
        log(f"load: {' '.join(cmd)} (stops after {REQUESTS:,} requests)")
        env = dict(
            os.environ,
            WATCHER_AGENT_TOKEN=be.agent_token,
            WATCHER_READER_TOKEN=be.reader_token,
            BENCH_METRICS_REQUESTS=str(REQUESTS),
            BENCH_THREADS="1",
        )
        with CpuMeter(be.pid) as cpu:
            out = run_until_quota(cmd, env)
        result.other_cpu_cores = round(cpu.other_cores, 2)
        result.server_cpu_cores = round(cpu.server_cores, 2)
        print(out)
        w = json.loads(next(x for x in out.splitlines() if x.startswith("WRK_JSON "))[9:])
        with urllib.request.urlopen(f"{be.url}/metrics", timeout=30) as r:
            text = r.read()
    series = [ln for ln in text.decode().splitlines() if ln and not ln.startswith("#")]
    families = Counter(ln.split("{", 1)[0].split(" ", 1)[0] for ln in series)
    old_bytes = OLD["metrics_bytes"]
    result.metrics += [
        Metric(
            "series in /metrics",
            len(series),
            "",
            "< 300",
            target_check(len(series), "<", 300),
        ),
        Metric(
            "/metrics size",
            len(text) / 1000,
            "kB",
            "",
            None,
            f"{old_bytes / 1e6:.1f} MB after {OLD['metrics_requests']:,} requests",
            f"{ratio_text(len(text), old_bytes, higher_is_better=False)}, after "
            f"{REQUESTS / OLD['metrics_requests']:.1f}x the requests",
        ),
    ]
    result.notes.append(
        f"{w['requests']:,} requests sent ({w['errors_status']:,} answered non-2xx by design, "
        f"{w['errors_other']} socket errors)"
    )
    result.notes.append(
        "largest families: " + ", ".join(f"{k} ({v})" for k, v in families.most_common(6))
    )
    if shutil.which("promtool"):
        p = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, check=False
        )
        msg = (p.stdout + p.stderr).decode().strip().replace("\n", "; ")
        result.notes.append(f"promtool check metrics: exit {p.returncode} {msg[:300]}".strip())


if __name__ == "__main__":
    sys.exit(run_bench("d", f"/metrics cardinality after {REQUESTS:,} varied requests", body))
