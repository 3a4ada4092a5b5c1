"""procmon's Prometheus metrics. Every label is a fixed set: never a student id or a path."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from watcher_procmon.classify import Classification
from watcher_procmon.tracer import Counters

PROCESS_NAMES = (
    "gcc", "g++", "cc", "c++", "clang", "clang++", "javac", "java", "python3", "python",
    "node", "make", "cmake", "binary", "other",
)  # fmt: skip
DROP_REASONS = (
    "not_student",  # hostname matched the kernel prefix but is not a student container's
    # cc1, as, ld ... of a build that the kernel still emitted (their pid owed an earlier
    # program's exit): folded into the driver's run; most are folded in the kernel
    # (watcher_procmon_kernel_events{outcome="folded"})
    "build_child",
    "invalid",  # could not be turned into a valid wire event (a bug: logged)
    "outbox_full",  # the outbox refused it (over budget or disk full)
)
CAPTURE_VIA = ("self", "parent", "peer", "missing")  # sources.VIAS
MISMATCH_CAUSES = ("mount", "path")  # to_wire.Origin.mismatch_cause
SOURCE_OUTCOMES = ("hashed", "gone", "missing", "too_large", "binary", "not_regular", "error")

# (type, outcome) -> the kernel counter it is read from
KERNEL_COUNTERS: dict[tuple[str, str], str] = {
    ("exec", "seen"): "exec_seen",
    ("exec", "emitted"): "exec_emitted",
    ("exec", "filtered"): "exec_filtered",
    ("exec", "folded"): "exec_folded",  # a compiler's pass: captured, no record
    ("exec", "dropped"): "exec_drop_ringbuf",
    ("exec", "dropped_scratch"): "exec_drop_scratch",
    ("exit", "seen"): "exit_seen",
    ("exit", "emitted"): "exit_emitted",
    ("exit", "filtered"): "exit_filtered",
    ("exit", "folded"): "exit_folded",
    ("exit", "dropped"): "exit_drop_ringbuf",
    ("stderr", "seen"): "stderr_seen",
    ("stderr", "emitted"): "stderr_emitted",
    ("stderr", "over_budget"): "stderr_drop_budget",
    ("stderr", "dropped"): "stderr_drop_ringbuf",
    ("stderr", "read_error"): "stderr_read_err",
}


def process_name(cls: Classification, exe: str) -> str:
    """The process_events_total label: a fixed tool name, python3 vs python by the exe."""
    if cls.tool == "python":
        return "python3" if posixpath.basename(exe).startswith("python3") else "python"
    return cls.tool if cls.tool in PROCESS_NAMES else "other"


class KernelCollector(Collector):
    """The in-kernel counters (cumulative since the agent loaded), read by ``read`` at each
    scrape (``main.kernel_counters_now``: exact, not the health check's copy)."""

    def __init__(self, read: Callable[[], Counters | None]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        c = self._read()
        fam = CounterMetricFamily(
            "watcher_procmon_kernel_events",
            "Events seen by the eBPF programs, by type and outcome",
            labels=["type", "outcome"],
        )
        if c is not None:
            for (typ, outcome), name in KERNEL_COUNTERS.items():
                fam.add_metric([typ, outcome], getattr(c, name))
        yield fam


class ProcmonMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        # Name, label and HELP text as the seed deployment guide shows them.
        self.process_events = Counter(
            "process_events",
            "Total number of process events detected",
            ["process_name"],
            registry=reg,
        )
        self.dropped = Counter(
            "watcher_procmon_records_dropped",
            "Process records not sent as runs, by reason",
            ["reason"],
            registry=reg,
        )
        self.sources = Counter(
            "watcher_procmon_sources",
            "Source files named in compiler / interpreter argv, by capture outcome",
            ["outcome"],
            registry=reg,
        )
        self.source_capture = Counter(
            "watcher_procmon_source_capture",
            "Compiler / interpreter execs whose sources were read, by whose /proc/<pid>/root "
            "(the process itself, its parent or a peer in its mount namespace; missing: none)",
            ["via"],
            registry=reg,
        )
        self.identity_mismatch = Counter(
            "watcher_procmon_identity_mismatch",
            "Execs flagged identity_mismatch: the hostname names another workspace than the "
            "one mounted (mount) or a path names another workspace (path)",
            ["cause"],
            registry=reg,
        )
        self.diagnostics = Counter(
            "watcher_procmon_diagnostics", "Compiler diagnostics parsed from stderr", registry=reg
        )
        self.exec_to_outbox = Histogram(
            "watcher_procmon_exec_to_outbox_seconds",
            "From a compiler/interpreter exec (kernel time) to its snapshots in the outbox"
            " (to its capture when the outbox already had every source as read)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=reg,
        )
        self.end_to_outbox = Histogram(
            "watcher_procmon_exit_to_outbox_seconds",
            "From a process's end (kernel time) to its run in the outbox",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=reg,
        )
        for n in PROCESS_NAMES:
            self.process_events.labels(process_name=n)
        for r in DROP_REASONS:
            self.dropped.labels(reason=r)
        for o in SOURCE_OUTCOMES:
            self.sources.labels(outcome=o)
        for v in CAPTURE_VIA:
            self.source_capture.labels(via=v)
        for c in MISMATCH_CAUSES:
            self.identity_mismatch.labels(cause=c)
