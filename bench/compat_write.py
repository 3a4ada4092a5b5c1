"""Benchmark a: compat single-event snapshot writes (the old agents' write path).

One uvicorn worker pinned to CPU 0, wrk pinned to CPU 1, 16 connections over loopback,
~20 s; every request is a distinct event. Targets: >= 1,400 req/s and p99 <= 50 ms.
Old system (recorded, not re-measured here): 137 req/s, p99 1,091 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
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
DURATION = os.environ.get("BENCH_DURATION", "20s")
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))


def probe(be: Backend) -> None:
    """One request by hand first, so a wrong route fails loudly instead of timing 404s."""
    req = urllib.request.Request(
        f"{be.url}/api/os-1/hw1/202600000/probe.c/20260301_000000",
        data=b'{"bytes": 10}',
        method="POST",
        headers={"Authorization": f"Bearer {be.agent_token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
        log(f"probe: HTTP {r.status} {body[:120]}")


def body(result: Result) -> None:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk not installed (scripts/install-deps.sh installs it)")
    with Backend("compat") as be:
        probe(be)
        cmd = [
            *taskset(CLIENT_CPU),
            "wrk",
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{DURATION}",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "compat_write.lua"),
            be.url,
        ]
        log("load: " + " ".join(cmd))
        env = dict(os.environ, WATCHER_AGENT_TOKEN=be.agent_token)
        with CpuMeter(be.pid) as cpu:
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        result.other_cpu_cores = round(cpu.other_cores, 2)
        result.server_cpu_cores = round(cpu.server_cores, 2)
        print(out)
        line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
        w = json.loads(line.removeprefix("WRK_JSON "))
        seconds = w["duration_us"] / 1e6
        errors = sum(v for k, v in w.items() if k.startswith("errors_"))
        good = w["requests"] - errors
        rps = good / seconds
        p50 = w["p50_us"] / 1000
        p99 = w["p99_us"] / 1000
        result.metrics += [
            Metric(
                "throughput (2xx only)",
                rps,
                "req/s",
                ">= 1,400",
                target_check(rps, ">=", 1400),
                f"{OLD['compat_write_rps']:,.0f} req/s",
                ratio_text(rps, OLD["compat_write_rps"], higher_is_better=True),
            ),
            Metric(
                "throughput per backend CPU-second",
                rps / cpu.server_cores if cpu.server_cores else None,
                "req/s",
                "",
                None,
                "",
                "",
            ),
            Metric("latency p50", p50, "ms"),
            Metric(
                "latency p99",
                p99,
                "ms",
                "<= 50",
                target_check(p99, "<=", 50),
                f"{OLD['compat_write_p99_ms']:,.0f} ms",
                ratio_text(p99, OLD["compat_write_p99_ms"], higher_is_better=False),
            ),
        ]
        result.notes.append(
            f"{w['requests']:,} requests in {seconds:.1f}s, {CONNECTIONS} connections, "
            f"errors: {errors} (non-2xx {w['errors_status']}, timeouts {w['errors_timeout']})"
        )
        if errors:
            result.notes.append("non-2xx answers are excluded from req/s; backend log tail:")
            result.notes.append(be.log_tail(5))


if __name__ == "__main__":
    sys.exit(
        run_bench("a", "compat single-event snapshot write (wrk, 1 uvicorn worker, c=16)", body)
    )
