"""The procmon pipeline: kernel events -> captured sources, build stderr, process runs -> sink.

Single-threaded by design (the tracer thread calls :meth:`Pipeline.feed` in ring buffer
order): an exec's sources are read when its exec arrives, a build's stderr is complete
when its driver's exit arrives (its children wrote and exited before it), and the run is
put into the sink then.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol

from watcher_common.identity import DEFAULT, IdentityConfig, NotStudent
from watcher_common.outbox import OutboxFull
from watcher_common.wire import Event
from watcher_procmon.classify import Classification, classify
from watcher_procmon.diagnostics import StderrCollector
from watcher_procmon.events import Event as KernelEvent
from watcher_procmon.events import ExecEvent, ExitEvent, StderrEvent
from watcher_procmon.metrics import ProcmonMetrics, process_name
from watcher_procmon.mntns import Namespaces
from watcher_procmon.records import BootClock, Pairer, ProcessRecord
from watcher_procmon.sources import SourceRead, capture_sources, container_path
from watcher_procmon.to_wire import Origin, origin, process_run, snapshot

log = logging.getLogger("watcher_procmon.agent")

SNAPSHOT_MEMORY = 4096  # (student, assignment, path) -> last sha sent: repeats are skipped


def agent_version() -> str:
    try:
        return version("watcher-procmon")
    except PackageNotFoundError:
        return "0"


class Sink(Protocol):
    def put(self, event: Event, content: bytes | None = None) -> None: ...


class HealthLike(Protocol):
    def set_degraded(self, reason: str, detail: str = "") -> None: ...
    def clear(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Pending:
    exec_ts: int
    cls: Classification
    origin: Origin | NotStudent
    sources: list[SourceRead]


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Pipeline:
    def __init__(
        self,
        sink: Sink,
        *,
        node: str = "",
        identity: IdentityConfig = DEFAULT,
        metrics: ProcmonMetrics | None = None,
        health: HealthLike | None = None,
        clock: BootClock | None = None,
        proc: str = "/proc",
    ) -> None:
        self.sink = sink
        self.node = node
        self.identity = identity
        self.metrics = metrics or ProcmonMetrics()
        self.health = health
        self.pairer = Pairer(clock or BootClock())
        self.stderr = StderrCollector()
        self.pending: dict[int, _Pending] = {}
        self.namespaces = Namespaces(identity, proc)
        self.proc = proc
        self._warned_mntns: OrderedDict[int, None] = OrderedDict()
        self.version = agent_version()
        self._sent: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()
        self.runs = 0
        self.snapshots = 0

    # ---- input ----------------------------------------------------------------------

    def feed(self, ev: KernelEvent) -> None:
        if isinstance(ev, StderrEvent):
            self.stderr.add(ev)
            return
        # first: an exec may complete the previous program of the same pid
        rec = self.pairer.feed(ev)
        if rec is not None:
            self._on_record(rec)
        if isinstance(ev, ExecEvent):
            self._on_exec(ev)
            self.namespaces.exec(ev)  # after: a process is not its own stand-in
        elif isinstance(ev, ExitEvent):
            self.namespaces.exit(ev.tgid)

    def flush(self) -> None:
        """At shutdown: runs of processes still running (no end known)."""
        for rec in self.pairer.flush():
            self._on_record(rec)

    # ---- exec: classify, attribute, capture sources -----------------------------------

    def _on_exec(self, ev: ExecEvent) -> None:
        cls = classify(ev.exe, ev.argv, ev.filename)
        paths = [p for s in cls.sources if (p := container_path(ev.cwd, s))]
        mounted = self.namespaces.workspace(ev)
        org = origin(ev.nodename, ev.cwd, paths, self.identity, mounted)
        if isinstance(org, Origin) and org.mismatch_cause is not None:
            self._mismatch(ev, org)
        reads: list[SourceRead] = []
        if cls.kind in ("compiler", "interpreter") and cls.sources and isinstance(org, Origin):
            reads, via = capture_sources(
                ev.tgid,
                ev.fork_ns,
                ev.cwd,
                cls.sources,
                ppid=ev.ppid,
                mntns=ev.mntns,
                peers=self.namespaces.peers(ev.mntns),
                proc=self.proc,
            )
            self.metrics.source_capture.labels(via=via).inc()
            if via in ("peer", "missing"):
                self.namespaces.prune(ev.mntns)  # the peers tried first may be long gone
            self._snapshots(ev, org, reads)
        self.pending[ev.tgid] = _Pending(ev.ts_ns, cls, org, reads)

    def _mismatch(self, ev: ExecEvent, org: Origin) -> None:
        self.metrics.identity_mismatch.labels(cause=org.mismatch_cause).inc()
        if ev.mntns in self._warned_mntns:
            return  # once per pod: every command of a renamed pod would repeat it
        self._warned_mntns[ev.mntns] = None
        if len(self._warned_mntns) > SNAPSHOT_MEMORY:
            self._warned_mntns.popitem(last=False)
        # no ids here (never in logs above DEBUG): the run carries them, flagged
        why = (
            "the hostname does not name the workspace mounted at the container root; runs "
            "are attributed to the mounted workspace"
            if org.mismatch_cause == "mount"
            else "a path names another workspace than the container's"
        )
        log.warning(
            "identity mismatch in mount namespace %d (%s): %s",
            ev.mntns,
            org.workspace.class_div,
            why,
        )

    def _snapshots(self, ev: ExecEvent, org: Origin, reads: list[SourceRead]) -> None:
        start = self.pairer.clock.to_utc(ev.ts_ns)
        for r in reads:
            self.metrics.sources.labels(outcome="hashed" if r.sha256 else r.status).inc()
            try:
                snap = snapshot(r, org, start, self.node, self.version, self.identity)
            except ValueError:  # e.g. a name that is not valid UTF-8
                self.metrics.dropped.labels(reason="invalid").inc()
                continue
            if snap is None:
                continue
            key = (snap.class_div, snap.student_id, snap.assignment, snap.path)
            if self._sent.get(key) == snap.sha256:
                self._sent.move_to_end(key)
                continue  # unchanged since we last sent it: the run's hash points at it
            if self._put(snap, r.content):
                self._sent[key] = snap.sha256 or ""
                self._sent.move_to_end(key)
                if len(self._sent) > SNAPSHOT_MEMORY:
                    self._sent.popitem(last=False)
                self.snapshots += 1
        if reads:
            self.metrics.exec_to_outbox.observe(max(0, _boot_ns() - ev.ts_ns) / 1e9)

    # ---- end: the run -------------------------------------------------------------------

    def _on_record(self, rec: ProcessRecord) -> None:
        ev = rec.exec
        p = self.pending.pop(ev.tgid, None)
        if p is None or p.exec_ts != ev.ts_ns:  # not expected: exec always comes first
            cls = classify(ev.exe, ev.argv, ev.filename)
            org = origin(ev.nodename, ev.cwd, [], self.identity, self.namespaces.workspace(ev))
            p = _Pending(ev.ts_ns, cls, org, [])
        build = self.stderr.finish(ev.tgid) if ev.build_tgid == ev.tgid else None
        if ev.build_tgid and ev.build_tgid != ev.tgid:
            self.metrics.dropped.labels(reason="build_child").inc()
            return
        if isinstance(p.origin, NotStudent):
            self.metrics.dropped.labels(reason="not_student").inc()
            return
        try:
            run = process_run(
                rec, p.cls, p.origin, p.sources, build, self.node, self.version, self.identity
            )
        except ValueError as exc:  # pydantic's ValidationError, undecodable text
            self.metrics.dropped.labels(reason="invalid").inc()
            log.warning("process record not sendable (%s): %s", p.cls.tool, type(exc).__name__)
            return
        if build is not None:
            self.metrics.diagnostics.inc(len(run.diagnostics))
        if self._put(run, None):
            self.runs += 1
            self.metrics.process_events.labels(process_name=process_name(p.cls, ev.exe)).inc()
            if rec.end_ns is not None:
                self.metrics.end_to_outbox.observe(max(0, _boot_ns() - rec.end_ns) / 1e9)

    def _put(self, event: Event, content: bytes | None) -> bool:
        try:
            self.sink.put(event, content)
        except OutboxFull as exc:
            self.metrics.dropped.labels(reason="outbox_full").inc()
            if self.health is not None:
                self.health.set_degraded("outbox_full", str(exc))
            return False
        if self.health is not None:
            self.health.clear("outbox_full")
        return True
