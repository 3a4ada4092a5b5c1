"""Benchmark b: batched ingest of file snapshots into SQLite (the agents' write path).

POST /api/v1/events with batches of BATCH ``file.snapshot`` events, each with ~1 KiB of
distinct inline content, CONCURRENCY batches in flight, from an httpx client pinned to
CPU 1 (request bodies are built before the clock starts). Target: >= 20,000 events/s.

Concurrency 16 is issue #2's setup for all its measurements ("uvicorn 1 worker pinned to
one core, load generator on the other, concurrency 16, loopback"); until session 3 this
benchmark used 4, so numbers before that are not comparable (4 gave ~20 % fewer
events/s: smaller group commits write the same index pages more often).

RUNS (3) whole runs, each on a fresh backend and database; the median run is reported and
all are listed (on this VM, runs of the same code differ by up to ~30 %). Knobs:
BENCH_INGEST_EVENTS (50000), BENCH_INGEST_BATCH (500), BENCH_INGEST_CONCURRENCY (16),
BENCH_INGEST_RUNS (3).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
from benchlib import (
    CLIENT_CPU,
    Backend,
    CpuMeter,
    Metric,
    Result,
    log,
    run_bench,
    target_check,
)

TOTAL = int(os.environ.get("BENCH_INGEST_EVENTS", "50000"))
BATCH = int(os.environ.get("BENCH_INGEST_BATCH", "500"))
CONCURRENCY = int(os.environ.get("BENCH_INGEST_CONCURRENCY", "16"))
# whole runs on fresh backends; the median is reported
RUNS = int(os.environ.get("BENCH_INGEST_RUNS", "3"))
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def snapshot(i: int, run: str, content: bytes, student: str, path: str) -> dict[str, object]:
    return {
        "kind": "file.snapshot",
        "event_id": f"bench-{run}-{i:09d}",
        "agent": "bench",
        "agent_version": "0",
        "node": "bench-node",
        "ts": (T0 + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"),
        "class_div": "os-1",
        "student_id": student,
        "assignment": "hw1",
        "path": path,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "content_b64": base64.b64encode(content).decode(),
    }


def make_bodies(total: int, batch: int, run: str) -> list[bytes]:
    """Distinct ~1 KiB C-like sources, 200 students x 5 files, grouped into JSON batches."""
    filler = ("    x = x * 31 + 7; /* line */\n" * 40).encode()
    files = ["main.c", "src/list.c", "src/list.h", "test/test_list.c", "Makefile"]
    events = []
    for i in range(total):
        head = f"// version {i} of {run}\n#include <stdio.h>\nint main(void) {{ int x = {i};\n"
        content = (head.encode() + filler)[:1024]
        student = f"2026{i % 200:05d}"
        events.append(snapshot(i, run, content, student, files[(i // 200) % len(files)]))
    return [json.dumps({"events": events[k : k + batch]}).encode() for k in range(0, total, batch)]


async def send_all(be: Backend, bodies: list[bytes]) -> tuple[float, dict[str, int], list[float]]:
    counts: dict[str, int] = {}
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    headers = {"Authorization": f"Bearer {be.agent_token}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=be.url, headers=headers, timeout=120) as client:

        async def worker() -> None:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                r = await client.post("/api/v1/events", content=body)
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    raise RuntimeError(f"ingest answered HTTP {r.status_code}: {r.text[:300]}")
                for res in r.json()["results"]:
                    counts[res["status"]] = counts.get(res["status"], 0) + 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - t0, counts, latencies


def one_run(
    bodies: list[bytes], warm: list[bytes]
) -> tuple[float, dict[str, int], list[float], CpuMeter]:
    """A fresh backend (new database): the warm-up batch, then every body, timed."""
    with Backend("ingest") as be:
        # warm-up: one batch of other events (route, schema, auth, DB creation)
        asyncio.run(send_all(be, warm))
        with CpuMeter(be.pid) as cpu:
            seconds, counts, lat = asyncio.run(send_all(be, bodies))
    return seconds, counts, lat, cpu


def body(result: Result) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > int(CLIENT_CPU):
        os.sched_setaffinity(0, {int(CLIENT_CPU)})
    run = f"{int(time.time())}"
    log(f"building {TOTAL:,} events in batches of {BATCH} ...")
    bodies = make_bodies(TOTAL, BATCH, run)
    log(f"{len(bodies)} request bodies, {sum(map(len, bodies)) / 1e6:.1f} MB in all")
    warm = make_bodies(BATCH, BATCH, run + "w")
    runs = []
    for k in range(RUNS):
        seconds, counts, lat, cpu = one_run(bodies, warm)
        stored = counts.get("stored", 0)
        if stored != TOTAL:
            raise RuntimeError(f"only {stored} of {TOTAL} events stored: {counts}")
        eps = stored / seconds
        log(f"run {k + 1}/{RUNS}: {eps:,.0f} events/s")
        runs.append((eps, seconds, counts, lat, cpu))
    # the median run (by events/s) is the one reported
    runs.sort(key=lambda r: r[0])
    eps, seconds, counts, lat, cpu = runs[len(runs) // 2]
    result.other_cpu_cores = round(cpu.other_cores, 2)
    result.server_cpu_cores = round(cpu.server_cores, 2)
    lat.sort()
    result.metrics += [
        Metric(
            "events stored per second (median run)",
            eps,
            "events/s",
            ">= 20,000",
            target_check(eps, ">=", 20000),
        ),
        Metric(
            "events per backend CPU-second",
            eps / cpu.server_cores if cpu.server_cores else None,
            "events/s",
        ),
        Metric("batch latency p50", lat[len(lat) // 2] * 1000, "ms"),
        Metric("batch latency p99", lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, "ms"),
    ]
    result.notes.append(
        f"{TOTAL:,} events, batches of {BATCH}, {CONCURRENCY} in flight; {RUNS} runs, each on a"
        f" fresh backend and database: {[round(r[0]) for r in runs]} events/s (the median"
        f" one is reported: {seconds:.2f}s, results {counts}); runs on this VM differ by up"
        " to ~30 % with the same code"
    )
    result.notes.append("old system: no batched ingest existed (one HTTP request per event)")


if __name__ == "__main__":
    sys.exit(run_bench("b", "batched ingest of 1 KiB file snapshots into SQLite", body))
