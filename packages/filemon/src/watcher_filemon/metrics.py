"""filemon's Prometheus metrics. Labels are bounded sets; never a student id or a path."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

EVENT_TYPES = ("create", "modify", "delete")
SKIP_REASONS = (
    "not_student",  # not below a <subject>-<div>-<id> workspace directory
    "outside_assignment",  # in a workspace but not inside an assignment directory
    "extension",  # not a source file by name
    "noise",  # editor/tool temporary or backup name
    "binary",  # NUL byte in the first 8 KiB
    "not_regular",  # symlink, fifo, device, directory
    "bad_name",  # not valid UTF-8 or otherwise unsendable
    "unstable",  # kept changing during every read attempt (re-tried later)
    "vanished",  # gone between the event and the read
    "bad_cell_line",  # a notebook cell-log line that is not valid (skipped)
)
RESCAN_REASONS = ("startup", "overflow", "periodic", "watch_limit")


class FilemonMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = REGISTRY if registry is None else registry
        # Name, label and HELP text exactly as the seed deployment guide shows them.
        self.file_events = Counter(
            "file_events",
            "Total number of file events detected",
            ["event_type"],
            registry=reg,
        )
        self.renames = Counter(
            "watcher_filemon_renames", "File renames recorded as renames", registry=reg
        )
        self.watches = Gauge(
            "watcher_filemon_watches", "Directories under inotify watch", registry=reg
        )
        self.rescans = Counter(
            "watcher_filemon_rescans", "Whole-tree rescans, by reason", ["reason"], registry=reg
        )
        self.overflows = Counter(
            "watcher_filemon_overflows", "inotify queue overflows (IN_Q_OVERFLOW)", registry=reg
        )
        self.skipped = Counter(
            "watcher_filemon_skipped",
            "File events not turned into versions, by reason",
            ["reason"],
            registry=reg,
        )
        self.capture_latency = Histogram(
            "watcher_filemon_capture_latency_seconds",
            "First event on a path to its version stored in the outbox (settle included)",
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
            registry=reg,
        )
        self.notebook_cells = Counter(
            "watcher_filemon_notebook_cells",
            "Executed notebook cells read from the hook's cell logs and stored in the outbox",
            registry=reg,
        )
        self.outbox_full = Counter(
            "watcher_filemon_outbox_full",
            "Times the outbox refused a batch, or the state db next to it could not be written"
            " (retried later)",
            registry=reg,
        )
        for t in EVENT_TYPES:
            self.file_events.labels(event_type=t)
        for r in SKIP_REASONS:
            self.skipped.labels(reason=r)
        for r in RESCAN_REASONS:
            self.rescans.labels(reason=r)
