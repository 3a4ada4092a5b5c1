"""In-process ingest cost per event (no HTTP): request-side parse + writer apply + commit.

Noise-resistant companion of ingest_batch.py: both halves of the ingest path run on this
thread and are timed in CPU time, so other load on the machine matters much less.

  uv run python bench/writer_inproc.py                   # per-event µs
  BENCH_PROFILE=1 uv run python bench/writer_inproc.py   # + cProfile of the writer half
  BENCH_REPEAT=5 uv run python bench/writer_inproc.py    # 5 runs on fresh DBs: min / median

The writer half's CPU is the whole process's (the WAL checkpoint thread included, as in
the backend; BENCH_NO_CHECKPOINTER=1 leaves checkpoints out entirely), with the writer
thread's own share on the next line. One thing it cannot show: in the backend the writer
shares the GIL with the event loop thread, so costs that scale with GIL hand-offs (a
driver call per row) look cheaper here than they are there.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest_batch import make_bodies

from watcher_backend import ingest, store
from watcher_backend.db.engine import make_engine, migrate
from watcher_backend.writer import GroupCommitWriter, _Item

TOTAL = int(os.environ.get("BENCH_INGEST_EVENTS", "20000"))
BATCH = int(os.environ.get("BENCH_INGEST_BATCH", "500"))
# batches per group commit (concurrent requests the writer drains at once)
GROUP = int(os.environ.get("BENCH_GROUP", "2"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))


def _prepare(body: bytes) -> list:  # type: ignore[type-arg]
    parse_batch = getattr(ingest, "parse_batch", None)
    if parse_batch is not None:  # batch-oriented request side
        return list(parse_batch(body, 10**6).valid)
    import json

    from watcher_common.wire import parse_event

    events = [parse_event(x) for x in json.loads(body)["events"]]
    prepare_event = getattr(store, "prepare_event", None)
    return events if prepare_event is None else [prepare_event(e) for e in events]


def _status(r: object) -> str:
    return str(r[1] if isinstance(r, tuple) else r.status)  # type: ignore[attr-defined]


def _writer_half(prepared: list, prof: cProfile.Profile | None) -> tuple[float, float, float]:  # type: ignore[type-arg]
    """(process CPU s, writer thread CPU s, wall s) to store ``prepared`` in a fresh DB."""
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(f"sqlite:///{tmp}/w.db")
        migrate(engine)
        writer = GroupCommitWriter(engine)  # not started: _process runs on this thread
        if writer.checkpointer is not None and not os.environ.get("BENCH_NO_CHECKPOINTER"):
            writer.checkpointer.start()  # as in the backend: WAL checkpoints on their thread
        t = time.process_time()
        tt = time.thread_time()
        w = time.perf_counter()
        if prof is not None:
            prof.enable()
        for k in range(0, len(prepared), GROUP):
            items = [_Item(events=p) for p in prepared[k : k + GROUP]]
            writer._process(items)
            for it in items:
                assert it.error is None, it.error
                bad = [r for r in it.result if _status(r) != "stored"]
                assert not bad, bad[:3]
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - w
        thread_cpu = time.thread_time() - tt
        writer._close()
        if writer.checkpointer is not None:
            writer.checkpointer.stop()  # its last checkpoint is counted: it is ingest's cost
        cpu = time.process_time() - t
        engine.dispose()
    return cpu, thread_cpu, wall


def main() -> None:
    bodies = make_bodies(TOTAL, BATCH, f"ip{int(time.time())}")
    prof = cProfile.Profile() if os.environ.get("BENCH_PROFILE") else None
    parse: list[float] = []
    runs: list[tuple[float, float, float]] = []
    # CPU time still varies with the other load on a shared machine: repeat, report the
    # minimum (least disturbed) and the median
    for _ in range(REPEAT):
        t = time.process_time()
        prepared = [_prepare(b) for b in bodies]
        parse.append((time.process_time() - t) / TOTAL * 1e6)
        runs.append(tuple(x / TOTAL * 1e6 for x in _writer_half(prepared, prof)))  # type: ignore[misc]
    med = statistics.median
    cpu = [r[0] for r in runs]
    thread = [r[1] for r in runs]
    wall = [r[2] for r in runs]
    print(
        f"events: {TOTAL}, batch {BATCH}, {GROUP} batches per commit, {REPEAT} runs (min / median)"
    )
    print(
        f"request side (parse/validate/prepare): {min(parse):6.1f} / {med(parse):6.1f} µs/event CPU"
    )
    print(f"writer (apply + commit):               {min(cpu):6.1f} / {med(cpu):6.1f} µs/event CPU")
    print(
        f"  of which the writer thread:          {min(thread):6.1f} / {med(thread):6.1f}"
        " µs/event CPU"
    )
    print(
        f"  checkpoint thread (process - writer): {min(c - t for c, t, _ in runs):6.1f}"
        " µs/event CPU (min)"
    )
    print(f"  wall:                                {min(wall):6.1f} / {med(wall):6.1f} µs/event")
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
