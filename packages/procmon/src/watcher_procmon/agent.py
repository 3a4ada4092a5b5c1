"""The procmon pipeline: kernel events -> captured sources, build stderr, process runs -> sink.

Single-threaded by design (the tracer thread calls :meth:`Pipeline.feed` in ring buffer
order): an exec's sources are read when its exec arrives, a build's stderr is complete
when its driver's exit arrives (its children wrote and exited before it), and the run is
put into the sink then. :meth:`Pipeline.feed_many` (one ring buffer read) writes all the
events it produces in one outbox transaction: one fsync per read instead of one per event,
and an event counts (metrics, dedup memory) once that transaction has committed. The agent
lets that transaction wait for later reads (``hold_s``; ``urgent_s`` for a batch that holds
a newly captured source, whose exec -> outbox is bounded): a record is then in the agent's
memory that long before it is durable, as records wait in the ring buffer for the periodic
poll already.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Protocol, runtime_checkable

from watcher_common.identity import DEFAULT, IdentityConfig, NotStudent, Workspace
from watcher_common.outbox import EncodedEvent, OutboxFull
from watcher_common.wire import Event, FileSnapshot, ProcessRun
from watcher_procmon.classify import Classification, classify
from watcher_procmon.diagnostics import BuildOutput, StderrCollector
from watcher_procmon.events import Event as KernelEvent
from watcher_procmon.events import ExecEvent, ExitEvent, StderrEvent
from watcher_procmon.metrics import ProcmonMetrics, process_name
from watcher_procmon.mntns import Namespaces
from watcher_procmon.records import BootClock, Pairer, ProcessRecord
from watcher_procmon.sources import VIAS, SourceRead, capture_sources, container_path
from watcher_procmon.to_wire import (
    Origin,
    origin,
    process_run,
    process_run_encoded,
    snapshot,
    snapshot_encoded,
    snapshot_target,
)

log = logging.getLogger("watcher_procmon.agent")

SNAPSHOT_MEMORY = 4096  # (student, assignment, path) -> last sha sent: repeats are skipped
# Students run the same commands in the same directories over and over: classification
# and attribution are pure functions of the exec's fields, so their answers are memoised
# (bounded; emptied when full). Long command lines are not worth keeping.
MEMO_ENTRIES = 2048
MEMO_MAX_ARGV = 4096


def agent_version() -> str:
    try:
        return version("watcher-procmon")
    except PackageNotFoundError:
        return "0"


class Sink(Protocol):
    def put(self, event: Event, content: bytes | None = None) -> None: ...


@runtime_checkable
class BatchSink(Sink, Protocol):
    """A sink that stores several events at once, all or none (the outbox)."""

    def put_many(self, items: Iterable[Event | tuple[Event, bytes | None]]) -> None: ...


class EncodedSink(Protocol):
    """A sink that also stores already-encoded events (the outbox: ``accepts_encoded``)."""

    def put(self, event: Event | EncodedEvent, content: bytes | None = None) -> None: ...


# not frozen: see _Pending
@dataclass(slots=True)
class _Put:
    # None: a run made when its batch is stored, from ``run`` (see Pipeline._on_record)
    event: Event | EncodedEvent | None
    content: bytes | None
    done: Callable[[], None] | None  # after it is stored
    failed: Callable[[], None] | None  # when the sink refused it (OutboxFull)
    # a run: its process_events child and end (for end_to_outbox), counted once stored
    # (fields, not a closure per run: this is the per-exec path)
    run_counter: _Inc | None = None
    end_ns: int | None = None
    run: tuple[ProcessRecord, _Pending, BuildOutput | None] | None = None


class HealthLike(Protocol):
    def set_degraded(self, reason: str, detail: str = "") -> None: ...
    def clear(self, reason: str) -> None: ...


# Not frozen (never mutated, though): a frozen __init__ sets each field through
# object.__setattr__, ~4 us more per record at hundreds of records a second.
@dataclass(slots=True)
class _Pending:
    exec_ts: int
    cls: Classification
    origin: Origin | NotStudent
    sources: list[SourceRead]


def _boot_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _since(boot_ns: int) -> float:
    """Seconds from a kernel timestamp to now."""
    return max(0, _boot_ns() - boot_ns) / 1e9


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


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
        self._children: set[int] = set()  # running build children (see feed)
        self.namespaces = Namespaces(identity, proc)
        self.proc = proc
        self._warned_mntns: OrderedDict[int, None] = OrderedDict()
        self.version = agent_version()
        self._sent: OrderedDict[tuple[str, str, str, str], str] = OrderedDict()
        self.runs = 0
        self.snapshots = 0
        self._last_compile = -1e9  # time.monotonic() when a compiler exec was last fed
        # set inside feed_many: puts wait there and are stored together
        self._batch: list[_Put] | None = None
        self._batch_due = 0.0  # time.monotonic() by which a held batch is written
        self._read_urgent_due = 0.0  # ... once it holds a new snapshot of the current read
        self._after_batch: list[Callable[[], None]] = []
        self._put_many: Callable[[Iterable[tuple[Event, bytes | None]]], None] | None = (
            sink.put_many if isinstance(sink, BatchSink) else None
        )
        # runs without build output skip the pydantic model when the sink can
        # take their JSON directly (see to_wire.process_run_encoded)
        self._encoded: EncodedSink | None = (
            sink  # type: ignore[assignment]
            if getattr(sink, "accepts_encoded", False) is True
            else None
        )

        # per-label children looked up once: .labels() hashes and locks on every call
        m = self.metrics
        self._hashed = m.sources.labels(outcome="hashed")
        self._via = {v: m.source_capture.labels(via=v) for v in VIAS}
        self._drop_invalid = m.dropped.labels(reason="invalid")
        self._drop_child = m.dropped.labels(reason="build_child")
        self._drop_not_student = m.dropped.labels(reason="not_student")
        self._drop_full = m.dropped.labels(reason="outbox_full")
        self._by_name: dict[str, _Inc] = {}
        self._classes: dict[tuple[str, tuple[str, ...], str], Classification] = {}
        self._origins: dict[
            tuple[str, str, tuple[str, ...], Workspace | None], Origin | NotStudent
        ] = {}

    # ---- input ----------------------------------------------------------------------

    def feed(self, ev: KernelEvent) -> None:
        if isinstance(ev, StderrEvent):
            self.stderr.add(ev)
            return
        if ev.tgid in self._children:
            # a build child's program ends here: it has no run (its stderr is its driver's)
            self._children.discard(ev.tgid)
            self._drop_child.inc()
            if isinstance(ev, ExitEvent):
                self.namespaces.exit(ev.tgid)
                return
        if isinstance(ev, ExecEvent) and ev.build_tgid and ev.build_tgid != ev.tgid:
            # A compiler's pass (cc1, as, collect2, ld) whose pid ran an earlier program:
            # the kernel folds the others (no records at all). Nothing of it is sent, so
            # it is not classified, attributed or paired (nor kept as a stand-in of its
            # namespace: its driver is one, and lives longer); only the program it
            # replaces in its pid ends.
            rec = self.pairer.replace(ev.tgid, ev.ts_ns)
            if rec is not None:
                self._on_record(rec)
            self._children.add(ev.tgid)
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

    def feed_many(
        self, events: Iterable[KernelEvent], hold_s: float = 0.0, urgent_s: float | None = None
    ) -> None:
        """Feed a ring buffer read; the events it produces go to the sink in one write.
        With ``hold_s`` that write may wait for later reads, until ``hold_s`` after the
        read that began it (see :meth:`commit_due_in`): during a build each compile is a
        read of its own, and one transaction per read cost more than the reads. A new
        snapshot (a source captured at exec that the outbox does not have yet) shortens
        the wait to ``urgent_s`` after this read (default ``hold_s``): exec -> outbox is
        bounded, a run's exit -> outbox is not. A read with ``hold_s`` 0 writes what
        earlier reads held at once."""
        now = time.monotonic()
        if self._batch is None:
            self._batch = []
            self._batch_due = now + hold_s
        self._read_urgent_due = now + (hold_s if urgent_s is None else urgent_s)
        self.namespaces.begin_batch()
        done = False
        try:
            for ev in events:
                self.feed(ev)
            done = True
        finally:
            self.namespaces.end_batch()
            if not self._batch and not self._after_batch:
                self._batch = None  # nothing to write: nothing waits
            elif not done or not hold_s or time.monotonic() >= self._batch_due:
                self.commit()
        self.namespaces.sweep()

    def commit(self) -> None:
        """Write what earlier reads produced (one transaction); their events count now."""
        batch, self._batch = self._batch, None
        if batch is not None:
            self._store(batch)

    def compiled_since(self, t: float) -> bool:
        """A compiler exec was fed at or after ``t`` (time.monotonic()): a build runs."""
        return self._last_compile >= t

    def commit_due_in(self) -> float | None:
        """Seconds until the held write is due (0: now); None when nothing is held."""
        if self._batch is None:
            return None
        return max(0.0, self._batch_due - time.monotonic())

    def flush(self) -> None:
        """At shutdown: what is held, then runs of processes still running (no end known)."""
        self.commit()
        self._batch = []
        self._drop_child.inc(len(self._children))  # still running: no run either way
        self._children.clear()
        try:
            for rec in self.pairer.flush():
                self._on_record(rec)
        finally:
            batch, self._batch = self._batch, None
            self._store(batch)

    def close(self) -> None:
        """Release the fds the namespace cache holds."""
        self.namespaces.close()

    # ---- exec: classify, attribute, capture sources -----------------------------------

    def _classify(self, ev: ExecEvent) -> Classification:
        if ev.argv_len > MEMO_MAX_ARGV:
            return classify(ev.exe, ev.argv, ev.filename)
        key = (ev.exe, ev.argv, ev.filename)
        cls = self._classes.get(key)
        if cls is None:
            cls = classify(ev.exe, ev.argv, ev.filename)
            if len(self._classes) >= MEMO_ENTRIES:
                self._classes.clear()
            self._classes[key] = cls
        return cls

    def _origin(
        self, ev: ExecEvent, paths: list[str], mounted: Workspace | None
    ) -> Origin | NotStudent:
        key = (ev.nodename, ev.cwd, tuple(paths), mounted)
        org = self._origins.get(key)
        if org is None:
            org = origin(ev.nodename, ev.cwd, paths, self.identity, mounted)
            if len(self._origins) >= MEMO_ENTRIES:
                self._origins.clear()
            self._origins[key] = org
        return org

    def _on_exec(self, ev: ExecEvent) -> None:
        cls = self._classify(ev)
        if cls.kind == "compiler":
            self._last_compile = time.monotonic()
        paths = [p for s in cls.sources if (p := container_path(ev.cwd, s))]
        mounted = self.namespaces.workspace(ev)
        org = self._origin(ev, paths, mounted)
        if isinstance(org, Origin) and org.mismatch_cause is not None:
            self._mismatch(ev, org)
        reads: list[SourceRead] = []
        if cls.kind in ("compiler", "interpreter") and cls.sources and isinstance(org, Origin):
            anchor = self.namespaces.root(ev.mntns)  # polled by workspace() above
            reads, via = capture_sources(
                ev.tgid,
                ev.fork_ns,
                ev.cwd,
                cls.sources,
                ppid=ev.ppid,
                mntns=ev.mntns,
                peers=self.namespaces.iter_peers(ev.mntns),  # listed only if asked
                proc=self.proc,
                anchor=anchor,
            )
            self._via[via].inc()
            if anchor is None and via in ("peer", "missing"):
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
        start: datetime | None = None  # only for a snapshot that is sent
        hashed = 0
        stored = False  # a new snapshot was put
        for r in reads:
            if r.sha256:
                hashed += 1
            else:
                self.metrics.sources.labels(outcome=r.status).inc()
            target = snapshot_target(r, org, self.identity)
            if target is None:
                continue
            ws = org.workspace
            key = (ws.class_div, ws.student_id, target.assignment, target.path)
            sha = r.sha256 or ""
            if self._sent.get(key) == sha:
                self._sent.move_to_end(key)
                continue  # unchanged since we last sent it: the run's hash points at it
            snap: FileSnapshot | EncodedEvent | None = None
            content = r.content
            if start is None:
                start = self.pairer.clock.to_utc(ev.ts_ns)
            if self._encoded is not None:
                snap = snapshot_encoded(r, org, target, start, self.node, self.version)
                if snap is not None:
                    content = None  # inline in the body
            if snap is None:
                try:
                    snap = snapshot(r, org, start, self.node, self.version, self.identity)
                except ValueError:  # e.g. a name that is not valid UTF-8
                    self._drop_invalid.inc()
                    continue
                if snap is None:
                    continue
            # remembered at once, so a second compile in the same batch is not sent twice;
            # put back as it was if the outbox refuses it
            prev = self._sent.get(key)
            self._sent[key] = sha
            self._sent.move_to_end(key)
            if len(self._sent) > SNAPSHOT_MEMORY:
                self._sent.popitem(last=False)
            self._put(snap, content, self._count_snapshot, self._unsent(key, sha, prev))
            stored = True
        if hashed:
            self._hashed.inc(hashed)
        if not reads:
            return
        if stored:
            ts = ev.ts_ns
            self._after(lambda: self.metrics.exec_to_outbox.observe(_since(ts)))
            if self._batch is not None:  # the held write is due sooner now
                self._batch_due = min(self._batch_due, self._read_urgent_due)
        else:  # every source as the outbox already has it: nothing to wait for
            self.metrics.exec_to_outbox.observe(_since(ev.ts_ns))

    def _count_snapshot(self) -> None:
        self.snapshots += 1

    def _unsent(
        self, key: tuple[str, str, str, str], sha: str, prev: str | None
    ) -> Callable[[], None]:
        """Undo of one refused snapshot's memory. Undone newest first, each restores what
        its put replaced: the last version that was stored, or nothing."""

        def undo() -> None:
            if self._sent.get(key) != sha:
                return  # a later version of the file took its place: that one counts
            if prev is None:
                del self._sent[key]
            else:
                self._sent[key] = prev

        return undo

    # ---- end: the run -------------------------------------------------------------------

    def _on_record(self, rec: ProcessRecord) -> None:
        ev = rec.exec
        p = self.pending.pop(ev.tgid, None)
        if p is None or p.exec_ts != ev.ts_ns:  # not expected: exec always comes first
            cls = self._classify(ev)
            org = self._origin(ev, [], self.namespaces.workspace(ev))
            p = _Pending(ev.ts_ns, cls, org, [])
        build = self.stderr.finish(ev.tgid) if ev.build_tgid == ev.tgid else None
        if ev.build_tgid and ev.build_tgid != ev.tgid:
            self._drop_child.inc()
            return
        if isinstance(p.origin, NotStudent):
            self._drop_not_student.inc()
            return
        counter = self._process_events(process_name(p.cls, ev.exe))
        # the event is made when its batch is stored (_made): the runs of a build's reads
        # are then encoded one after another, warm, instead of each in a read of its own
        # while the compilers have the caches; counted in _stored
        item = _Put(None, None, None, None, counter, rec.end_ns, (rec, p, build))
        if self._batch is not None:
            self._batch.append(item)
        else:
            self._store([item])

    def _run(
        self, rec: ProcessRecord, p: _Pending, build: BuildOutput | None
    ) -> ProcessRun | EncodedEvent | None:
        """The run's wire event; None when it cannot be sent (counted and logged)."""
        org = p.origin
        assert isinstance(org, Origin)  # NotStudent runs are dropped before
        run: ProcessRun | EncodedEvent | None = None
        if self._encoded is not None and build is None:
            run = process_run_encoded(
                rec, p.cls, org, self.node, self.version, p.sources, self.identity
            )
        try:
            if run is None:
                run = process_run(
                    rec, p.cls, org, p.sources, build, self.node, self.version, self.identity
                )
        except ValueError as exc:  # pydantic's ValidationError, undecodable text
            self._drop_invalid.inc()
            log.warning("process record not sendable (%s): %s", p.cls.tool, type(exc).__name__)
            return None
        if build is not None and isinstance(run, ProcessRun):
            self.metrics.diagnostics.inc(len(run.diagnostics))
        return run

    def _made(self, item: _Put) -> bool:
        """Make a deferred run's event (see _on_record); False when it cannot be sent."""
        if item.event is None and item.run is not None:
            item.event = self._run(*item.run)
            item.run = None
        return item.event is not None

    def _process_events(self, name: str) -> _Inc:
        child = self._by_name.get(name)
        if child is None:
            child = self._by_name[name] = self.metrics.process_events.labels(process_name=name)
        return child

    # ---- the sink -----------------------------------------------------------------------

    def _put(
        self,
        event: Event | EncodedEvent,
        content: bytes | None,
        done: Callable[[], None] | None = None,
        failed: Callable[[], None] | None = None,
    ) -> None:
        item = _Put(event, content, done, failed)
        if self._batch is not None:
            self._batch.append(item)
        else:
            self._store([item])

    def _after(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current batch is stored (at once outside a batch)."""
        if self._batch is not None:
            self._after_batch.append(fn)
        else:
            fn()

    def _store(self, items: list[_Put]) -> None:
        after, self._after_batch = self._after_batch, []
        items = [i for i in items if self._made(i)]
        if len(items) > 1 and self._put_many is not None:
            try:
                self._put_many([(i.event, i.content) for i in items])  # type: ignore[misc]
            except OutboxFull:
                # all or none: store what still fits one by one, as unbatched puts would
                self._store_each(items)
            else:
                self._stored(items)
        else:
            self._store_each(items)
        for fn in after:
            fn()

    def _store_each(self, items: list[_Put]) -> None:
        refused: list[_Put] = []
        for item in items:
            try:
                if isinstance(item.event, EncodedEvent):
                    assert self._encoded is not None  # only made for such a sink
                    self._encoded.put(item.event, None)
                else:
                    assert item.event is not None  # made in _store
                    self.sink.put(item.event, item.content)
            except OutboxFull as exc:
                self._drop_full.inc()
                refused.append(item)
                if self.health is not None:
                    self.health.set_degraded("outbox_full", str(exc))
            else:
                self._stored([item])
        # newest first: each undo restores the value its put replaced (see _unsent)
        for item in reversed(refused):
            if item.failed is not None:
                item.failed()

    def _stored(self, items: list[_Put]) -> None:
        if self.health is not None:
            self.health.clear("outbox_full")
        observe = self.metrics.end_to_outbox.observe
        now = _boot_ns()
        runs: dict[_Inc, int] = {}  # one inc per process_name child, not per run
        for item in items:
            if item.done is not None:
                item.done()
            counter = item.run_counter
            if counter is not None:
                runs[counter] = runs.get(counter, 0) + 1
                if item.end_ns is not None:
                    observe(max(0, now - item.end_ns) / 1e9)
        for counter, n in runs.items():
            self.runs += n
            counter.inc(n)
