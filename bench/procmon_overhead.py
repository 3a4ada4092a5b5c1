"""Benchmark j: what procmon costs — in-kernel ns per exec+exit (``bpf_stats``), the
agent's userspace CPU at 200 student execs/s, and the slowdown of a real build.

1. ``kernel.bpf_stats_enabled`` is set to 1 for the measurement (restored after); the
   agent's programs (the tracing programs that appeared when it loaded) report
   ``run_time_ns`` / ``run_cnt`` through ``bpftool prog show --json``. N fork+execs of
   ``/bin/true`` inside a student container, then the same outside one (filtered: the
   cost every other process on the node pays). The stderr hook (capture of tracked
   compilers' write(2) to fd 2) is the ``syscalls:sys_enter_write`` trace event (BPF runs
   on write(2) only; ``handle_write``) or, without tracefs access, raw ``sys_enter`` (BPF
   runs on every syscall; ``handle_sys_enter``): its ns per run is shown, and what any
   syscall costs more with the agent loaded (a getppid() loop, CPU time per call, best of
   5, with and without the agent).
2. The generator paced at 200 execs/s for CPU_SECONDS (30) inside the container: the
   agent's utime+stime over wall time.
3. A generated C project (FILES, 50 files of a few functions each, one header) is built
   with ``make -B -j<nproc>`` inside the container ROUNDS (20) times with the agent loaded
   and 20 times without, interleaved (the order alternates each round; the agent is
   started before and stopped after each traced build; ``bpf_stats`` stays on in both
   arms). Before each timed build, traced or not, one student compile of a project file
   runs in the container; with the agent, the timed build starts once the agent has
   stored that compile's run. That warm-up is what a long-running agent has behind it
   (its first compile's first-use costs: lazy imports, the first model validations, the
   outbox's first blob): paid once per agent in production, it is not a per-build cost.

   The target check uses the CPU procmon adds to a build, over the build's own CPU time
   (median of the rounds): the agent's on-CPU time from the timed build's start until,
   after a 0.5 s drain of the build's records, the stub backend has had the build's runs
   (make's own run, made after the build returned, is the last; the sender lingers up to
   SEND_LINGER_S to batch: the request that sends them is counted, and so is the agent's
   idle CPU while it waits; schedstat of its threads, ns) plus its BPF programs' run time
   during the build (bpf_stats; charged to the compilers, and it includes every other
   exec on the machine meanwhile). Both terms are measured directly, so the figure holds
   on a shared machine; it is the slowdown if every nanosecond of it competed with the
   compilers (the agent runs at nice 10, so in fact it mostly fills the build's idle
   moments). What it leaves out,
   indirect costs such as cache pollution, is in the other two figures, which are
   reported as medians of per-round paired ratios (with / without of the same round:
   slow drifts of the shared machine cancel) with a distribution-free 95% interval
   (order statistics of the median): the wall time, and the CPU form (build CPU with -
   build CPU without + agent CPU) / build CPU without (children's user+sys from rusage).
   Their run-to-run noise here is ±5-15% per build, so at 20 rounds their intervals are
   several % wide: they can show a large slowdown, not one of 1%. Also reported: the
   medians of wall and build CPU times, the agent's CPU per build alone, and exec →
   outbox p99 during the builds (the agent's histogram, summed over the rounds).

   Each traced build is the agent's first sight of 50 of the project's files (a fresh
   agent per round): their sources are new snapshots, written and sent. A long-running
   agent sees that once; in 9 of the issue's 10 compiles of the project the sources are
   unchanged. So after each traced round's timed build the same agent builds the project
   once more, and "the same for the next build by the same agent" is that build's agent
   + BPF CPU (measured the same way) over the round's untraced build CPU (informational).

Floor lines (informational, no target): before the agent is loaded, a minimal BPF object
(bench/procmon/floor.bpf.c, compiled here with the Makefile's clang flags) is attached to
the same two hooks and measured as in phase 1 (the same generator, N student execs at
400/s, bpf_stats), then for FLOOR_SECONDS at the maximum rate (``nproc`` loops, as in bench
i). It keeps what any design with one ring buffer record per student exec and one per its
exit must do: the nodename prefix filter, the per-CPU counters, the tracked bit per tgid
(set by the exec, claimed by the exit), a fixed-size record per exec (sizeof pm_exec, only
tgid, ppid and time written) and per exit (pm_exit: tgid, wait status), the batched
wakeup counted as procmon.bpf.c counts it; no argv, paths, namespace ids, tool lookup or
capture. A thread of this
process consumes its ring buffer every 50 ms (the agent's idle poll). The gap between the
agent's figure and the floor is what the record's content costs; the floor is what the
hooks, the filter and the ring buffer cost on this machine whatever the content.

The agent sends to a stub backend (a separate process that answers every event "stored"):
its sender's work per request (batching, HTTP, acks in the outbox) is part of the agent's
CPU in phases 2 and 3, as it is on a node. (Without a backend the sender would only fail to
connect and back off, costing a different, smaller amount.)

Knobs: BENCH_PM_STAT_EXECS (5000), BENCH_PM_CPU_SECONDS (30), BENCH_PM_BUILD_ROUNDS (20;
0 skips the build phase; each round is ~7 s on a quiet machine, the default keeps the
bench under ~4 min; more rounds narrow the intervals), BENCH_PM_BUILD_FILES (50),
BENCH_PM_FLOOR_SECONDS (10; the floor probe's max-rate run, 0 skips it).
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agentlib import Agent, histogram_quantile, sysctl, tmpfs_dir
from benchlib import CLK_TCK, Metric, Result, log, run_bench, target_check
from procmonlib import (
    agent_prog_ids,
    build_floor,
    build_forkexec,
    build_sysloop,
    floor_probe,
    forkexec,
    in_container,
    procmon,
    prog_stats,
    require_root,
    runs_total,
    stats_delta,
    stub_backend,
    syscall_ns,
    tracing_progs,
    wait_sent,
)

from watcher_procmon.main import SEND_LINGER_S

STAT_EXECS = int(os.environ.get("BENCH_PM_STAT_EXECS", "5000"))
CPU_SECONDS = float(os.environ.get("BENCH_PM_CPU_SECONDS", "30"))
ROUNDS = int(os.environ.get("BENCH_PM_BUILD_ROUNDS", "20"))
FILES = int(os.environ.get("BENCH_PM_BUILD_FILES", "50"))
FLOOR_SECONDS = float(os.environ.get("BENCH_PM_FLOOR_SECONDS", "10"))
NPROC = os.cpu_count() or 1
EXEC_TO_OUTBOX = "watcher_procmon_exec_to_outbox_seconds"


def make_project(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "lib.h").write_text(
        "#pragma once\n#include <stddef.h>\n"
        + "".join(f"long f{i}(const long *v, size_t n);\n" for i in range(FILES))
    )
    for i in range(FILES):
        (d / f"f{i}.c").write_text(
            f'#include "lib.h"\n#include <stdio.h>\n#include <string.h>\n'
            f"static long g{i}(long x) {{ return x * {i + 3} % 1000003; }}\n"
            f"long f{i}(const long *v, size_t n) {{\n"
            f"    long acc = {i};\n"
            f"    for (size_t k = 0; k < n; k++) acc = g{i}(acc + v[k]);\n"
            f'    char buf[64]; snprintf(buf, sizeof buf, "%ld", acc);\n'
            f"    return acc + (long)strlen(buf);\n}}\n"
        )
    calls = "".join(f"    s += f{i}(v, 4);\n" for i in range(FILES))
    (d / "main.c").write_text(
        '#include "lib.h"\n#include <stdio.h>\nint main(void) {\n'
        f"    long v[4] = {{1, 2, 3, 4}}, s = 0;\n{calls}"
        '    printf("%ld\\n", s);\n    return 0;\n}\n'
    )
    objs = " ".join(["main.o", *(f"f{i}.o" for i in range(FILES))])
    (d / "Makefile").write_text(
        f"CFLAGS = -O2 -Wall\nOBJS = {objs}\n"
        "app: $(OBJS)\n\tgcc -o $@ $(OBJS)\n"
        "%.o: %.c lib.h\n\tgcc $(CFLAGS) -c $< -o $@\n"
    )


def build(d: Path) -> tuple[float, float]:
    """(wall s, CPU s of the build's processes)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(
        in_container(["make", "-s", "-B", f"-j{NPROC}", "-C", str(d)]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def warm_up(d: Path, tmp: Path, pm: Agent | None) -> None:
    """One student compile before the timed build; with an agent, until it stored its run."""
    before = runs_total(pm.metrics()) if pm else 0.0
    subprocess.run(
        in_container(["gcc", "-O2", "-c", str(d / "f0.c"), "-o", str(tmp / "warm.o")]),
        check=True,
    )
    deadline = time.monotonic() + 10
    while pm is not None and runs_total(pm.metrics()) <= before:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agent stored no run of the warm-up compile:\n{pm.tail()}")
        time.sleep(0.05)


def median_ci(xs: list[float]) -> tuple[float, float] | None:
    """Distribution-free 95% interval of the median: the order statistics x(j), x(n+1-j)
    with j the largest rank such that P(Binomial(n, 1/2) < j) <= 2.5% (needs n >= 6)."""
    n = len(xs)
    below, j = 0.0, 0
    for k in range(n + 1):  # P(B < k+1) = P(B <= k)
        below += math.comb(n, k) / 2**n
        if below > 0.025:
            break
        j = k + 1
    if j < 1:
        return None
    s = sorted(xs)
    return s[j - 1], s[n - j]


def ci_text(ci: tuple[float, float] | None) -> str:
    return "n/a (fewer than 6 rounds)" if ci is None else f"[{ci[0]:.2f}, {ci[1]:.2f}] %"


def ci_hi(ci: tuple[float, float] | None) -> float | None:
    return None if ci is None else round(ci[1], 2)


def rnd(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def body(result: Result) -> None:
    require_root()
    with tmpfs_dir("watcher-bench-pmo-") as tmp, stub_backend() as api:
        gen = build_forkexec(tmp)
        sysloop = build_sysloop(tmp)
        sys_without = syscall_ns(sysloop)
        proj = tmp / "project"
        make_project(proj)
        build(proj)  # warm the page cache, check it builds
        others = len(tracing_progs())
        # ---- floor probe: before the agent, so that their programs never run together --
        log("floor probe: filter + fixed ring records, at 400/s and at the max rate")
        floor: dict[str, tuple[int, float, dict[str, tuple[int, int]]]] = {}
        runs = {"400/s": (STAT_EXECS / 400, 400.0, 1), "max": (FLOOR_SECONDS, 0.0, NPROC)}
        with floor_probe(build_floor(tmp)) as fp, sysctl("kernel/bpf_stats_enabled", "1"):
            for label, (seconds, rate, workers) in runs.items():
                if seconds > 0:
                    s0 = prog_stats(fp.ids)
                    n, secs = forkexec(gen, seconds, rate, workers, ["/bin/true"])
                    floor[label] = (n, secs, stats_delta(s0, prog_stats(fp.ids)))
        # ---- 1 + 2: bpf_stats and userspace CPU ------------------------------------
        with procmon(tmp, api_server=api) as pm:
            pm.wait_log("procmon ready")
            ours = agent_prog_ids(pm.text()) & set(tracing_progs())
            if len(ours) != 3:
                raise RuntimeError(f"expected procmon's 3 programs in its log, got ids {ours}")
            with sysctl("kernel/bpf_stats_enabled", "1"):
                per = {}
                for label, container in (("student", True), ("other", False)):
                    s0 = prog_stats(ours)
                    seconds = STAT_EXECS / 400
                    n, _ = forkexec(gen, seconds, 400, 1, ["/bin/true"], container=container)
                    s1 = prog_stats(ours)
                    per[label] = (n, stats_delta(s0, s1))
            sys_with = syscall_ns(sysloop)
            log(f"userspace CPU at 200 student execs/s for {CPU_SECONDS:.0f} s")
            cpu0 = pm.cpu_ticks()
            n200, secs200 = forkexec(gen, CPU_SECONDS, 200, 1, ["/bin/true"])
            ended = time.time_ns()
            time.sleep(1.0)  # the last events reach the agent
            # ... and the backend: the request that sends them counts too
            wait_sent(api, ended, SEND_LINGER_S + 1.5)
            cpu = (pm.cpu_ticks() - cpu0) / CLK_TCK / (secs200 + 1.0)
        sys_without = min(sys_without, syscall_ns(sysloop))  # before and after the agent
        # ---- 3: build slowdown ------------------------------------------------------
        with_agent: list[tuple[float, float]] = []
        without: list[tuple[float, float]] = []
        traced_builds = 0.0
        agent_cpu: list[float] = []  # the agent's on-CPU s per traced build (+0.5 s drain)
        bpf_cpu: list[float] = []  # its BPF programs' run time during the traced build, s
        repeat_cpu: list[float] = []  # agent + BPF, s, for a second build by the same agent
        latency: dict[str, float] = {}  # exec -> outbox histogram summed over the rounds
        sent = 0  # rounds whose window ended with a request to the backend
        with sysctl("kernel/bpf_stats_enabled", "1"):
            for r in range(ROUNDS):
                order = (True, False) if r % 2 == 0 else (False, True)
                for traced in order:
                    if traced:
                        with procmon(tmp / f"round{r}", api_server=api) as pm:
                            pm.wait_log("procmon ready")
                            progs = agent_prog_ids(pm.text())
                            warm_up(proj, tmp, pm)
                            m0 = pm.metrics()
                            cpu0, st0 = pm.cpu_ns(), prog_stats(progs)
                            with_agent.append(build(proj))
                            ended = time.time_ns()
                            st1 = prog_stats(progs)
                            time.sleep(0.5)
                            # until the build's runs are sent (make's own run is the last
                            # made): their request is a cost too
                            sent += wait_sent(api, ended, SEND_LINGER_S + 1.5)
                            agent_cpu.append((pm.cpu_ns() - cpu0) / 1e9)
                            ran = stats_delta(st0, st1)
                            bpf_cpu.append(sum(ns for ns, _ in ran.values()) / 1e9)
                            m1 = pm.metrics()
                            traced_builds += runs_total(m1) - runs_total(m0)
                            for k, v in m1.items():
                                if k.startswith(EXEC_TO_OUTBOX + "_bucket"):
                                    latency[k] = latency.get(k, 0.0) + v - m0.get(k, 0.0)
                            # the same project again with the same agent (as for 9 of the
                            # issue's 10 compiles): its sources are in the outbox already
                            cpu0, st0 = pm.cpu_ns(), prog_stats(progs)
                            build(proj)
                            ended = time.time_ns()
                            st1 = prog_stats(progs)
                            time.sleep(0.5)
                            wait_sent(api, ended, SEND_LINGER_S + 1.5)
                            repeat_cpu.append(
                                (pm.cpu_ns() - cpu0) / 1e9
                                + sum(ns for ns, _ in stats_delta(st0, st1).values()) / 1e9
                            )
                    else:
                        warm_up(proj, tmp, None)
                        without.append(build(proj))
                log(f"build round {r + 1}/{ROUNDS}: with {with_agent[-1][0]:.2f} s,"
                    f" without {without[-1][0]:.2f} s")  # fmt: skip

    def ns(label: str, *names: str) -> float | None:
        """Sum over ``names`` of the mean ns per program run in that phase (the phase's
        runs also include a few other processes' execs, which dilute it slightly)."""
        _, d = per[label]
        means = [d[k][0] / d[k][1] for k in names if d.get(k, (0, 0))[1]]
        return sum(means) if len(means) == len(names) else None

    def floor_ns(label: str) -> float | None:
        d = floor[label][2] if label in floor else {}
        means = [d[k][0] / d[k][1] for k in ("floor_exec", "floor_exit") if d.get(k, (0, 0))[1]]
        return round(sum(means)) if len(means) == 2 else None

    floor_rate = floor["max"][0] / floor["max"][1] if "max" in floor else 0.0
    exec_exit = ns("student", "handle_exec", "handle_exit")
    filtered = ns("other", "handle_exec", "handle_exit")
    hook = next((h for h in ("handle_write", "handle_sys_enter") if h in per["student"][1]), "")
    se_ns, se_cnt = per["student"][1].get(hook, (0, 0))

    def median(xs: list[float]) -> float | None:
        return statistics.median(xs) if xs else None  # BUILD_ROUNDS=0: no build phase

    w_med = median([w for w, _ in with_agent])
    wo_med = median([w for w, _ in without])
    c_med = median([c for _, c in with_agent])
    co_med = median([c for _, c in without])
    a_med = median(agent_cpu)
    b_med = median(bpf_cpu)
    slow = None if w_med is None or wo_med is None else (w_med / wo_med - 1) * 100
    pairs = list(zip(with_agent, without, strict=True))
    # each round's traced build against the same round's untraced one
    paired = [(w / wo - 1) * 100 for (w, _), (wo, _) in pairs]
    slow_paired = median(paired)
    paired_ci = median_ci(paired)
    # the CPU the agent made the build's machine do, over the build's own CPU time: the
    # build's extra CPU (in-kernel BPF time is charged to the compilers, plus any cache
    # effects) + the agent's own, per round
    paired_cpu = [
        (c - co + a) / co * 100 for ((_, c), (_, co)), a in zip(pairs, agent_cpu, strict=True)
    ]
    slow_cpu_paired = median(paired_cpu)
    cpu_ci = median_ci(paired_cpu)
    # the target figure: the work procmon adds, each part measured exactly (agent on-CPU
    # time from schedstat, its programs' run time from bpf_stats), over the build's CPU
    cost = [(a + b) / co * 100 for a, b, (_, co) in zip(agent_cpu, bpf_cpu, without, strict=True)]
    slow_cost = median(cost)
    # the same, for the build right after it (same agent, same project: nothing new to
    # capture), over the same round's untraced build CPU
    cost_repeat = [r / co * 100 for r, (_, co) in zip(repeat_cpu, without, strict=True)]
    slow_repeat = median(cost_repeat)
    # the agent's CPU as a share of the build's: the slowdown if all of it competed
    share = None if a_med is None or not wo_med else a_med / (NPROC * wo_med) * 100
    slow_cpu = None if c_med is None or co_med is None else (c_med / co_med - 1) * 100
    spread = (
        statistics.pstdev(w for w, _ in without) / wo_med * 100
        if len(without) > 1 and wo_med
        else 0
    )
    p99_build = histogram_quantile(latency, EXEC_TO_OUTBOX, 0.99) if latency else None
    cpu_per_exec_us = cpu * (secs200 + 1.0) / max(1, n200) * 1e6
    exec_exit_us = None if exec_exit is None else exec_exit / 1000
    result.metrics += [
        Metric("in-kernel time per student exec+exit", exec_exit, "ns", "<= 3,000",
               target_check(exec_exit, "<=", 3000)),
        Metric("in-kernel time per other process's exec+exit (filtered)", filtered, "ns"),
        Metric("floor: filter + fixed ring records, per student exec+exit at 400/s",
               floor_ns("400/s"), "ns"),
        Metric(f"floor: the same at the max rate ({floor_rate:,.0f} execs/s)", floor_ns("max"),
               "ns"),
        Metric("stderr hook per BPF run (see notes for which hook)",
               se_ns / se_cnt if se_cnt else None, "ns"),
        Metric("CPU added to an unrelated syscall (getppid) by the loaded agent",
               round(sys_with - sys_without, 1), "ns"),
        Metric("agent userspace CPU at 200 student execs/s", round(cpu * 100, 2), "% of a core",
               "<= 5", target_check(cpu * 100, "<=", 5)),
        Metric("agent userspace CPU per student exec+exit at 200/s", round(cpu_per_exec_us, 1),
               "us"),
        Metric("build wall time, median without the agent", rnd(wo_med, 3), "s"),
        Metric("build wall time, median with the agent", rnd(w_med, 3), "s"),
        Metric("build slowdown: CPU procmon adds (agent + its BPF programs) / build CPU,"
               " median", rnd(slow_cost, 2), "%", "<= 1", target_check(slow_cost, "<=", 1)),
        Metric("  the same for the next build by the same agent (sources unchanged), median",
               rnd(slow_repeat, 2), "%"),
        Metric("build slowdown (wall, median of per-round paired ratios)", rnd(slow_paired, 2),
               "%"),
        Metric("  its 95% interval (order statistics): upper end", ci_hi(paired_ci), "%"),
        Metric("build slowdown (CPU: build CPU with − without + agent CPU, / without;"
               " median of rounds)", rnd(slow_cpu_paired, 2), "%"),
        Metric("  its 95% interval (order statistics): upper end", ci_hi(cpu_ci), "%"),
        Metric("build slowdown (wall, ratio of medians)", rnd(slow, 2), "%"),
        Metric("build slowdown (CPU time of the build, medians)", rnd(slow_cpu, 2), "%"),
        Metric("agent CPU per traced build (on-CPU time, median)",
               rnd(None if a_med is None else a_med * 1000, 1), "ms"),
        Metric("procmon BPF programs' run time per traced build (median)",
               rnd(None if b_med is None else b_med * 1000, 1), "ms"),
        Metric("agent CPU per traced build / (nproc × build wall time)", rnd(share, 2), "%"),
        Metric("exec → outbox p99 during the traced builds (bucket upper bound)",
               None if p99_build is None else p99_build * 1000, "ms"),
    ]  # fmt: skip
    result.notes += [
        f"bpf_stats: {per['student'][0]} student execs of /bin/true at 400/s (container) and"
        f" {per['other'][0]} outside one; per exec+exit = mean ns per run of handle_exec +"
        f" mean ns per run of handle_exit; (runs, {{program: (ns, runs)}}) per phase: {per};"
        f" the stderr hook is {hook} (handle_write: write(2) only; handle_sys_enter: every"
        " syscall of every process; both return at once unless the task is a captured"
        f" compiler); getppid() {sys_without:.1f} ns without the agent, {sys_with:.1f} ns"
        f" with it; exec+exit target 3 µs → {exec_exit_us and round(exec_exit_us, 2)} µs",
        "floor probe (bench/procmon/floor.bpf.c, no agent loaded): (execs, seconds,"
        f" {{program: (ns, runs)}}) per run: {floor}; records its reader took: {fp.records}"
        " (exec and exit: the student execs of both runs and the generators themselves)",
        f"userspace CPU: {n200} execs in {secs200:.1f} s (+1 s to drain), utime+stime of the"
        " agent process; the agent sends to a stub backend that acks every event (its own"
        " process), so its sender's requests are counted",
        f"build: {FILES + 1} C files + link, make -B -j{NPROC} in the container, {ROUNDS}"
        f" rounds interleaved (order alternating), each after a warm-up compile (with the"
        f" agent: once its run is stored); wall times without"
        f" {[round(w, 2) for w, _ in without]}, with {[round(w, 2) for w, _ in with_agent]};"
        f" build CPU without {[round(c, 2) for _, c in without]}, with"
        f" {[round(c, 2) for _, c in with_agent]} s;"
        f" per-round paired slowdowns {[round(p, 1) for p in paired]} % (wall; median's 95%"
        f" interval {ci_text(paired_ci)}), {[round(p, 1) for p in paired_cpu]} % (CPU;"
        f" {ci_text(cpu_ci)}), {[round(p, 2) for p in cost]} % (CPU procmon adds),"
        f" {[round(p, 2) for p in cost_repeat]} % (the same for the next build);"
        f" run-to-run spread without the agent ±{spread:.1f}%; runs the agent recorded per"
        f" traced build ≈{traced_builds / max(1, ROUNDS):.0f}; agent CPU per traced build"
        f" {[round(c * 1000, 1) for c in agent_cpu]} ms; its BPF programs' run time per"
        f" traced build {[round(c * 1000, 2) for c in bpf_cpu]} ms (all execs on the machine"
        f" meanwhile, bpf_stats on in both arms); other procmon programs loaded on the machine"
        f" meanwhile (e.g. other tests): {others}; rounds whose agent CPU window ended with"
        f" the build's runs at the stub backend: {sent}/{ROUNDS} (else it ended"
        f" {SEND_LINGER_S + 1.5:.1f} s after the 0.5 s drain)",
    ]


if __name__ == "__main__":
    sys.exit(run_bench("j", "procmon: in-kernel ns, userspace CPU, build slowdown", body))
