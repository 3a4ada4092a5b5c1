"""In-process cost of one compat single-event write (no sockets, no HTTP parsing).

Drives the ASGI app directly with CONC concurrent requests shaped like compat_write.lua
and reports CPU µs per request (all threads of this process), so the number holds even
when the machine is busy.

  uv run python bench/compat_inproc.py
  BENCH_PROFILE=1 uv run python bench/compat_inproc.py   # + cProfile (event-loop thread)
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import tempfile
import time
from typing import Any

from watcher_backend.app import create_app
from watcher_backend.config import Settings

N = int(os.environ.get("BENCH_REQUESTS", "3000"))
CONC = int(os.environ.get("BENCH_CONNECTIONS", "16"))
FILES = ["main.c", "src@list.c", "hello.c", "util@io.h", "README.md"]
TOKEN = "bench-agent-token"


def _scope(n: int) -> tuple[dict[str, Any], bytes]:
    student = f"2026{n % 200:05d}"
    ts = time.strftime("%Y%m%d_%H%M%S", time.gmtime(1772323200 + n))
    path = f"/api/os-1/hw1/{student}/{FILES[n % len(FILES)]}/{ts}"
    body = f'{{"bytes": {100 + n % 5000}}}'.encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {TOKEN}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 80),
    }
    return scope, body


async def _one(app: Any, n: int) -> int:
    scope, body = _scope(n)
    status = 0

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _run(app: Any, start: int, n: int) -> list[int]:
    nxt = start
    statuses: list[int] = []

    async def worker() -> None:
        nonlocal nxt
        while nxt < start + n:
            k = nxt
            nxt += 1
            statuses.append(await _one(app, k))

    await asyncio.gather(*(worker() for _ in range(CONC)))
    return statuses


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(db_url=f"sqlite:///{tmp}/c.db", agent_tokens=(TOKEN,))
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            await _run(app, 10**6, 200)  # warm-up
            prof = cProfile.Profile(time.thread_time) if os.environ.get("BENCH_PROFILE") else None
            if prof is not None:
                prof.enable()
            c0, w0, t0 = time.process_time(), time.perf_counter(), time.thread_time()
            statuses = await _run(app, 0, N)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            loop_cpu = time.thread_time() - t0
            if prof is not None:
                prof.disable()
        bad = [s for s in statuses if s != 200]
        assert not bad, bad[:5]
        print(
            f"{N} compat writes, {CONC} concurrent: {cpu / N * 1e6:.0f} µs CPU/request, "
            f"{wall / N * 1e6:.0f} µs wall/request ({N / wall:.0f} req/s in-process); "
            f"event-loop thread {loop_cpu / N * 1e6:.0f} µs, other threads (writer) "
            f"{(cpu - loop_cpu) / N * 1e6:.0f} µs"
        )
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    asyncio.run(main())
