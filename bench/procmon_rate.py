"""Benchmark i: procmon at this machine's maximum fork+exec rate of student processes
(0 drops?), and exec → event in the outbox.

Part 1: a C generator (bench/procmon/forkexec.c) forks and execs ``/bin/true`` as fast as
``nproc`` parallel loops can, inside a student container (``unshare --uts``, hostname
``jcode-os-1-202012345-bench-x``), for SECONDS (60), with a real ``watcher-procmon``
loaded (outbox only: no backend). A short run without the agent first gives the machine's
rate without tracing. Drops come from the agent's metrics: the in-kernel counters
(``watcher_procmon_kernel_events_total{outcome="dropped"|"dropped_scratch"}``, ring buffer
full / no scratch space) and the runs that reached the outbox (``process_events_total``)
versus the execs the generator made. ``kernel.bpf_stats_enabled`` is 1 during the max-rate
run (restored after): the mean ns per run of handle_exec + handle_exit at that rate is
reported as an extra (bench j's figure at 400/s is the target check; at the max rate
both CPUs are busy with fork+exec, so cache lines are hotter or more contended).

Part 2: exec → snapshot in the outbox (the agent's own histogram
``watcher_procmon_exec_to_outbox_seconds``, kernel exec time to outbox write, observed for
every compiler / interpreter exec whose sources it hashes): N runs of ``python3 -S
script.py`` paced at 20/s inside the container. Reported as the bucket upper bound that
holds the p99 (conservative), plus the mean.

Knobs: BENCH_PM_SECONDS (60), BENCH_PM_BASE_SECONDS (10), BENCH_PM_PY_RUNS (200).
"""

from __future__ import annotations

import os
import sys
import time

from agentlib import histogram_quantile, sysctl, tmpfs_dir
from benchlib import CLK_TCK, Metric, Result, fmt, log, run_bench, target_check
from procmonlib import (
    agent_prog_ids,
    build_forkexec,
    forkexec,
    kernel_counter,
    procmon,
    prog_stats,
    require_root,
    runs_total,
    stats_delta,
)

SECONDS = float(os.environ.get("BENCH_PM_SECONDS", "60"))
BASE_SECONDS = float(os.environ.get("BENCH_PM_BASE_SECONDS", "10"))
PY_RUNS = int(os.environ.get("BENCH_PM_PY_RUNS", "200"))
WORKERS = os.cpu_count() or 1
TRUE = "/bin/true"


def body(result: Result) -> None:
    require_root()
    with tmpfs_dir("watcher-bench-pm-") as tmp:
        gen = build_forkexec(tmp)
        log(f"baseline: fork+exec {TRUE} for {BASE_SECONDS:.0f} s without the agent")
        base_n, base_s = forkexec(gen, BASE_SECONDS, 0, WORKERS, [TRUE])
        base_rate = base_n / base_s
        ws = tmp / "os-1-202012345" / "hw1"
        ws.mkdir(parents=True)
        script = ws / "main.py"
        script.write_text("print(sum(range(10)))\n")
        env = {"WATCHER_CONTAINER_ROOTS": f"/home/coder/project,{tmp}/{{workspace}}"}
        with procmon(tmp, **env) as pm:
            pm.wait_log("procmon ready")
            progs = agent_prog_ids(pm.text())
            m0 = pm.metrics()
            cpu0 = pm.cpu_ticks()
            log(f"max rate: fork+exec {TRUE}, {WORKERS} loops, {SECONDS:.0f} s, agent loaded")
            with sysctl("kernel/bpf_stats_enabled", "1"):
                st0 = prog_stats(progs)
                n, secs = forkexec(gen, SECONDS, 0, WORKERS, [TRUE])
                st1 = prog_stats(progs)
            agent_cpu = (pm.cpu_ticks() - cpu0) / CLK_TCK / secs
            # let the agent finish the ring buffer and the outbox writes
            deadline = time.monotonic() + 60
            m1 = pm.metrics()
            while time.monotonic() < deadline:
                time.sleep(1.0)
                m_next = pm.metrics()
                if runs_total(m_next) == runs_total(m1):
                    break
                m1 = m_next
            m1 = pm.metrics()
            log(f"exec → outbox: {PY_RUNS} x python3 -S main.py at 20/s")
            forkexec(gen, PY_RUNS / 20, 20, 1, ["/usr/bin/python3", "-S", str(script)])
            time.sleep(2.0)
            m2 = pm.metrics()

    def d(key: str, a: dict[str, float] = m0, b: dict[str, float] = m1) -> float:
        return b.get(key, 0.0) - a.get(key, 0.0)

    def k(typ: str, outcome: str) -> float:
        return kernel_counter(m1, typ, outcome) - kernel_counter(m0, typ, outcome)

    kdrops = k("exec", "dropped") + k("exec", "dropped_scratch") + k("exit", "dropped")
    runs = runs_total(m1) - runs_total(m0)
    udrops = sum(d(key) for key in m1 if key.startswith("watcher_procmon_records_dropped_total{"))
    missing = max(0.0, n - runs)
    p99 = histogram_quantile(m2, "watcher_procmon_exec_to_outbox_seconds", 0.99)
    p50 = histogram_quantile(m2, "watcher_procmon_exec_to_outbox_seconds", 0.50)
    cnt = m2.get("watcher_procmon_exec_to_outbox_seconds_count", 0.0)
    mean = m2.get("watcher_procmon_exec_to_outbox_seconds_sum", 0.0) / cnt if cnt else None
    p99_ms = None if p99 is None else p99 * 1000
    # mean ns per run of each program over the max-rate run (other execs on the machine
    # meanwhile included: a few per thousand)
    ran = stats_delta(st0, st1)
    per_run = {k: ns / runs for k, (ns, runs) in ran.items() if runs > 0}
    max_rate_ns = (
        per_run["handle_exec"] + per_run["handle_exit"]
        if "handle_exec" in per_run and "handle_exit" in per_run
        else None
    )
    result.metrics += [
        Metric("max fork+exec rate with the agent (student processes)", round(n / secs), "execs/s"),
        Metric("max fork+exec rate without the agent", round(base_rate), "execs/s"),
        Metric("student execs in the run", n, f"in {secs:.0f} s"),
        Metric("in-kernel drops (ring buffer / scratch)", kdrops, "", "= 0", kdrops == 0),
        Metric("execs without a run in the outbox", missing, "", "= 0", missing == 0),
        Metric("agent CPU at the max rate", round(agent_cpu * 100, 1), "% of a core"),
        Metric("exec → outbox p99 (bucket upper bound)", p99_ms, "ms", "<= 100",
               target_check(p99_ms, "<=", 100)),
        Metric("exec → outbox p50 (bucket upper bound)", None if p50 is None else p50 * 1000, "ms"),
        Metric("exec → outbox mean", None if mean is None else round(mean * 1000, 2), "ms"),
        Metric(f"extra: in-kernel ns per student exec+exit at the max rate ({n / secs:,.0f}"
               "/s; bpf_stats; the target is bench j's at 400/s)",
               None if max_rate_ns is None else round(max_rate_ns), "ns"),
    ]  # fmt: skip
    result.notes += [
        f"{WORKERS} fork+exec loops of {TRUE} in a UTS namespace with a jcode- hostname;"
        f" kernel counters over the run: exec seen {k('exec', 'seen'):.0f}, emitted"
        f" {k('exec', 'emitted'):.0f}, filtered {k('exec', 'filtered'):.0f} (other processes on"
        f" the machine), exit seen {k('exit', 'seen'):.0f} emitted {k('exit', 'emitted'):.0f};"
        f" runs in the outbox {runs:.0f} (includes the container's sh/hostname), records"
        f" dropped in userspace {udrops:.0f}; agent without a backend (outbox only);"
        f" bpf_stats over the max-rate run (mean ns, runs): "
        + ", ".join(f"{k_}: {ns / max(1, r):.0f} ns, {r}" for k_, (ns, r) in sorted(ran.items())),
        f"exec → outbox: {cnt:.0f} observations (python3 runs whose script was hashed at exec),"
        " kernel exec timestamp to the outbox commit; bucket bounds 1, 2.5, 5, 10, 25, 50,"
        f" 100 ms …; mean {fmt(None if mean is None else mean * 1000, 2)} ms",
    ]


if __name__ == "__main__":
    sys.exit(run_bench("i", "procmon: max fork+exec rate (drops), exec → outbox", body))
