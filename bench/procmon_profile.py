"""Profile of procmon's tracer thread (not part of ``make bench``): the tracer, the
pipeline and a real outbox run in this process's main thread under cProfile while the
fork+exec generator runs at RATE execs/s in a student container for SECONDS. Prints the
thread CPU per exec+exit (with and without the profiler's own overhead) and the top
functions by cumulative time.

Knobs: BENCH_PM_PROF_SECONDS (10), BENCH_PM_PROF_RATE (200), BENCH_PM_PROF_TOP (35),
BENCH_PM_PROF_OFF=1 (no cProfile: the plain CPU per exec), BENCH_PM_PROF_REPLAY (5): the raw
records captured live are then decoded and fed again this many times (fresh pipeline and
outbox each, same batches) without the kernel, the CPU per exec+exit printed for each
(steadier than the live figure on a shared machine). BENCH_PM_PROF_BUILD=N: instead of the
generator, N builds of bench j's generated C project (``make -B -j<nproc>``) in the
container, one after another; the figures "per exec" are then per build. The records are
read by the agent's own ``TracerLoop.step`` (BENCH_PM_PROF_HOLD_MS / _GAP_MS / _BUILD_GAP_MS
/ _BUILD_HOLD_MS override its hold and gaps); BENCH_PM_PROF_TIMER=cpu profiles thread CPU
time, not wall time; BENCH_PM_PROF_SORT (tottime): the printed profiles' pstats sort key.
"""

from __future__ import annotations

import cProfile
import gc
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentlib import BPF_OBJ, histogram_quantile
from procmonlib import build_forkexec, in_container, require_root
from prometheus_client import CollectorRegistry

from watcher_common.outbox import Outbox
from watcher_procmon.agent import Pipeline
from watcher_procmon.events import decode
from watcher_procmon.main import BUILD_GAP_S, BUILD_HOLD_S, GAP_S, HOLD_S, TracerLoop
from watcher_procmon.metrics import ProcmonMetrics
from watcher_procmon.tracer import Tracer, TracerConfig

SECONDS = float(os.environ.get("BENCH_PM_PROF_SECONDS", "10"))
RATE = float(os.environ.get("BENCH_PM_PROF_RATE", "200"))
TOP = int(os.environ.get("BENCH_PM_PROF_TOP", "35"))
OFF = os.environ.get("BENCH_PM_PROF_OFF", "") == "1"
REPLAY = int(os.environ.get("BENCH_PM_PROF_REPLAY", "5"))
BUILDS = int(os.environ.get("BENCH_PM_PROF_BUILD", "0"))
SORT = os.environ.get("BENCH_PM_PROF_SORT", "tottime")


class _NullSink:
    """Keeps what it is given (the pipeline's cost without the outbox's)."""

    accepts_encoded = True

    def __init__(self) -> None:
        self.items: list[list[object]] = []

    def put(self, event: object, content: bytes | None = None) -> None:
        self.items.append([(event, content)])

    def put_many(self, items: object) -> None:
        self.items.append(list(items))  # type: ignore[call-overload]


def stages(tmp: Path, batches: list[list[bytes]], execs: int) -> None:
    """CPU per exec+exit of each stage alone: decoding, the pipeline, the outbox."""
    per = 1e6 / max(1, execs)
    t0 = time.thread_time()
    decoded = [[decode(r) for r in raws] for raws in batches]
    t1 = time.thread_time()
    sink = _NullSink()
    pipe = Pipeline(sink, node="bench", metrics=ProcmonMetrics(CollectorRegistry()))  # type: ignore[arg-type]
    prof = cProfile.Profile()
    if os.environ.get("BENCH_PM_PROF_STAGE") == "1":
        prof.enable()
    for evs in decoded:
        pipe.feed_many(evs)
    prof.disable()
    t2 = time.thread_time()
    pipe.close()
    outbox = Outbox(tmp / "stages.db")
    t3 = time.thread_time()
    for items in sink.items:
        outbox.put_many(items)  # type: ignore[arg-type]
    t4 = time.thread_time()
    outbox.close()
    print(
        f"stages per exec+exit: decode {(t1 - t0) * per:.1f} us,"
        f" pipeline {(t2 - t1) * per:.1f} us, outbox {(t4 - t3) * per:.1f} us"
        f" ({len(sink.items)} transactions)"
    )
    if os.environ.get("BENCH_PM_PROF_STAGE") == "1":
        pstats.Stats(prof, stream=sys.stdout).sort_stats(SORT).print_stats(TOP)


def replay(tmp: Path, batches: list[list[bytes]], execs: int) -> None:
    stages(tmp, batches, execs)
    for i in range(REPLAY):
        outbox = Outbox(tmp / f"replay-{i}.db")
        pipe = Pipeline(outbox, node="bench", metrics=ProcmonMetrics(CollectorRegistry()))
        t0 = time.thread_time()
        for raws in batches:
            pipe.feed_many([decode(r) for r in raws])
        cpu = time.thread_time() - t0
        pipe.close()
        outbox.close()
        print(f"replay {i}: {cpu / max(1, execs) * 1e6:.1f} us per exec+exit")


def main() -> int:
    require_root()
    with tempfile.TemporaryDirectory(prefix="pm-prof-") as d:
        tmp = Path(d)
        gen = build_forkexec(tmp)
        outbox = Outbox(tmp / "outbox.db")
        with Tracer(TracerConfig(bpf_object=BPF_OBJ)) as tracer:
            pipe = Pipeline(outbox, node="bench", metrics=ProcmonMetrics(CollectorRegistry()))
            batches: list[list[bytes]] = []
            on_record = tracer._on_record

            def keep(raw: bytes) -> None:
                batches[-1].append(raw)
                on_record(raw)

            tracer._on_record = keep  # type: ignore[method-assign]
            store_cpu = [0.0]
            store = pipe._store

            def timed_store(items: list[Any]) -> None:
                t = time.thread_time()
                store(items)
                store_cpu[0] += time.thread_time() - t

            pipe._store = timed_store  # type: ignore[method-assign]
            tracer._rb._on_record = keep  # type: ignore[union-attr]
            if BUILDS:
                from procmon_overhead import NPROC, make_project

                make_project(tmp / "project")
                make = ["make", "-s", "-B", f"-j{NPROC}", "-C", str(tmp / "project")]
                subprocess.run(make, check=True, stdout=subprocess.DEVNULL)  # page cache
                script = "; ".join([" ".join(make) + " >/dev/null"] * BUILDS)
                cmd = in_container(["sh", "-c", f"{script}; echo {BUILDS}"])
            else:
                cmd = in_container([str(gen), str(SECONDS), str(RATE), "1", "/bin/true"])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            # BENCH_PM_PROF_TIMER=cpu: thread CPU time, not wall time (poll's sleep is not
            # counted; slower per call)
            cpu_timer = os.environ.get("BENCH_PM_PROF_TIMER") == "cpu"
            prof = cProfile.Profile(time.thread_time) if cpu_timer else cProfile.Profile()
            if os.environ.get("BENCH_PM_PROF_GC") == "freeze":
                gc.collect()
                gc.freeze()
            gc_before = sum(st["collections"] for st in gc.get_stats())
            t0 = time.thread_time()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            if not OFF:
                prof.enable()
            # the agent's own read loop (hold and gap: BENCH_PM_PROF_HOLD_MS / _GAP_MS)
            loop = TracerLoop(
                tracer,
                pipe,
                None,
                float(os.environ.get("BENCH_PM_PROF_HOLD_MS", HOLD_S * 1e3)) / 1e3,
                float(os.environ.get("BENCH_PM_PROF_GAP_MS", GAP_S * 1e3)) / 1e3,
                float(os.environ.get("BENCH_PM_PROF_BUILD_GAP_MS", BUILD_GAP_S * 1e3)) / 1e3,
                float(os.environ.get("BENCH_PM_PROF_BUILD_HOLD_MS", BUILD_HOLD_S * 1e3)) / 1e3,
            )
            read_cpu = 0.0
            read_events = tracer.read_events

            def timed_read(timeout_ms: int | None = None) -> list[Any]:
                nonlocal read_cpu
                batches.append([])
                t = time.thread_time()
                try:
                    return read_events(timeout_ms)
                finally:
                    read_cpu += time.thread_time() - t

            tracer.read_events = timed_read  # type: ignore[method-assign]
            while proc.poll() is None:
                loop.step()
            pipe.commit()
            pipe.feed_many(tracer.read_events(200))
            if not OFF:
                prof.disable()
            cpu = time.thread_time() - t0
            gc_after = sum(st["collections"] for st in gc.get_stats())
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            execs = int((proc.stdout.read() if proc.stdout else "0").split()[0])
            vias = {
                smp.labels["via"]: int(smp.value)
                for smp in pipe.metrics.source_capture.collect()[0].samples
                if smp.name.endswith("_total")
            }
            # exec -> outbox: the bucket holding the p99 (upper bound, as bench i reports it)
            hist = {
                f'{smp.name}{{le="{smp.labels["le"]}"}}': smp.value
                for smp in pipe.metrics.exec_to_outbox.collect()[0].samples
                if smp.name.endswith("_bucket")
            }
            p99 = histogram_quantile(hist, "watcher_procmon_exec_to_outbox_seconds", 0.99)
            pipe.close()
        n = outbox.stats().events
        outbox.close()
        replay(tmp, [b for b in batches if b], execs)
    print(f"gc collections during the run: {gc_after - gc_before} (gen counts {gc.get_count()})")
    print(f"sources captured via {vias}; exec -> outbox p99 <= {p99} s (bucket bound)")
    print(f"execs {execs}, runs in outbox {n}, tracer-thread CPU {cpu:.3f} s")
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    per = 1e6 / max(1, execs)
    print(f"user {user * per:.1f} us, sys {sys_ * per:.1f} us per exec")
    print(f"of which reading (poll, consume, decode): {read_cpu * per:.1f} us")
    full = [b for b in batches if b]
    print(f"reads: {len(batches)}, with records {len(full)}, records {sum(map(len, full))}")
    print(f"of which storing (outbox put_many + callbacks): {store_cpu[0] * per:.1f} us")
    print(f"per exec+exit: {cpu * per:.1f} us ({'no profiler' if OFF else 'profiled'})")
    if not OFF:
        pstats.Stats(prof, stream=sys.stdout).sort_stats(SORT).print_stats(TOP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
