"""Profile of procmon's tracer thread (not part of ``make bench``): the tracer, the
pipeline and a real outbox run in this process's main thread under cProfile while the
fork+exec generator runs at RATE execs/s in a student container for SECONDS. Prints the
thread CPU per exec+exit (with and without the profiler's own overhead) and the top
functions by cumulative time.

Knobs: BENCH_PM_PROF_SECONDS (10), BENCH_PM_PROF_RATE (200), BENCH_PM_PROF_TOP (35),
BENCH_PM_PROF_OFF=1 (no cProfile: the plain CPU per exec).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentlib import BPF_OBJ
from procmonlib import build_forkexec, in_container, require_root

from watcher_common.outbox import Outbox
from watcher_procmon.agent import Pipeline
from watcher_procmon.tracer import Tracer, TracerConfig

SECONDS = float(os.environ.get("BENCH_PM_PROF_SECONDS", "10"))
RATE = float(os.environ.get("BENCH_PM_PROF_RATE", "200"))
TOP = int(os.environ.get("BENCH_PM_PROF_TOP", "35"))
OFF = os.environ.get("BENCH_PM_PROF_OFF", "") == "1"


def main() -> int:
    require_root()
    with tempfile.TemporaryDirectory(prefix="pm-prof-") as d:
        tmp = Path(d)
        gen = build_forkexec(tmp)
        outbox = Outbox(tmp / "outbox.db")
        with Tracer(TracerConfig(bpf_object=BPF_OBJ)) as tracer:
            pipe = Pipeline(outbox, node="bench")
            cmd = in_container([str(gen), str(SECONDS), str(RATE), "1", "/bin/true"])
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            prof = cProfile.Profile(time.thread_time)  # CPU, not wall (fsync waits)
            t0 = time.thread_time()
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            if not OFF:
                prof.enable()
            while proc.poll() is None:
                pipe.feed_many(tracer.read_events())
            pipe.feed_many(tracer.read_events(200))
            if not OFF:
                prof.disable()
            cpu = time.thread_time() - t0
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            execs = int((proc.stdout.read() if proc.stdout else "0").split()[0])
            pipe.close()
        n = outbox.stats().events
        outbox.close()
    print(f"execs {execs}, runs in outbox {n}, tracer-thread CPU {cpu:.3f} s")
    user, sys_ = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    print(f"user {user / max(1, execs) * 1e6:.1f} us, sys {sys_ / max(1, execs) * 1e6:.1f} us per exec")
    print(f"per exec+exit: {cpu / max(1, execs) * 1e6:.1f} us ({'no profiler' if OFF else 'profiled'})")
    if not OFF:
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(TOP)
    return 0


if __name__ == "__main__":
    sys.exit(main())
