"""Commit semantics: when a file event becomes a version, and which version.

Every event only marks a path *dirty* with a deadline; when the deadline passes the path is
looked at as it is on disk *now* (level-triggered), which is what makes editor patterns
collapse into one save without special cases for each editor:

- ``CLOSE_WRITE`` / ``MOVED_TO`` / a file found by listing a new directory *commit* the
  path: it is read ``settle_s`` (default 200 ms) after the last event, but never later than
  ``settle_cap_s`` (2 s) after the first, so a file rewritten non-stop is still captured.
- ``MODIFY`` / ``CREATE`` without a close (a writer that keeps the file open) wait until the
  file has been still for ``quiet_s``; a close in the meantime turns it into a commit.
- ``DELETE`` / ``MOVED_FROM`` wait ``settle_s``: if the path exists again by then (vim:
  rename to ``name~``, write a new ``name``; Jupyter; ``sed -i``) it is an ordinary save,
  otherwise the file is recorded as deleted.
- A rename between two tracked names in the same assignment is recorded as a rename.

A version is read with a consistency check (fstat before and after the read agree), hashed
and emitted only if its SHA-256 differs from the last version captured for that path.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import heapq
import itertools
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, Protocol

from watcher_common.identity import (
    IdentityConfig,
    NotStudent,
    Workspace,
    parse_workspace_dir,
    parse_workspace_path,
)
from watcher_common.wire import Event, FileDelete, FileRename, FileSnapshot, new_event_id, utcnow
from watcher_filemon.metrics import FilemonMetrics
from watcher_filemon.noise import FileFilter
from watcher_filemon.state import FileState, StateDB
from watcher_filemon.watch_tree import FileEventKind

log = logging.getLogger(__name__)

BINARY_PROBE_BYTES = 8192
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class Sink(Protocol):
    """Where events go; ``put_many`` is durable on return (watcher_common.outbox.Outbox)."""

    def put_many(self, items: Sequence[tuple[Event, bytes | None]]) -> None: ...


class SideFiles(Protocol):
    """Files that are not versions but carry events of their own (cells.CellTailer)."""

    def claims(self, rel: str) -> bool: ...
    def file_event(self, rel: str, kind: FileEventKind) -> None: ...
    def file_moved(self, old: str, new: str) -> None: ...
    def dir_moved(self, old: str, new: str) -> None: ...
    def dir_gone(self, rel: str) -> None: ...
    def scan_found(self, rel: str, st: os.stat_result) -> None: ...


class HealthLike(Protocol):
    def set_degraded(self, reason: str, detail: str = "") -> None: ...
    def clear(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    settle_s: float = 0.2
    settle_cap_s: float = 2.0
    quiet_s: float = 1.0
    max_file_bytes: int = 1 << 20
    read_attempts: int = 4
    unstable_retries: int = 10
    retry_after_full_s: float = 5.0
    checks_per_tick: int = 1000


@dataclass(frozen=True, slots=True)
class Target:
    class_div: str
    student_id: str
    assignment: str
    path: str  # below the assignment directory

    @property
    def scope(self) -> tuple[str, str, str]:
        return (self.class_div, self.student_id, self.assignment)


# ---- reading -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadOk:
    data: bytes | None  # None when too large (metadata only)
    st: os.stat_result


ReadFail = Literal["vanished", "not_regular", "unstable"]


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def read_stable(path: str, max_bytes: int, attempts: int = 4) -> ReadOk | ReadFail:
    """Read a whole regular file, retrying while it changes under us (torn reads)."""
    for i in range(attempts):
        try:
            fd = os.open(path, _O_READ)
        except FileNotFoundError:
            return "vanished"
        except OSError as exc:
            # ELOOP: the final component is a symlink (never followed).
            return "not_regular" if exc.errno in (errno.ELOOP, errno.ENXIO) else "vanished"
        try:
            st1 = os.fstat(fd)
            if not stat.S_ISREG(st1.st_mode):
                return "not_regular"
            if st1.st_size > max_bytes:
                return ReadOk(None, st1)
            chunks: list[bytes] = []
            total = 0
            while total <= max_bytes:
                chunk = os.read(fd, max(65536, st1.st_size - total + 1))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            st2 = os.fstat(fd)
        finally:
            os.close(fd)
        data = b"".join(chunks)
        if _same(st1, st2) and len(data) == st2.st_size:
            return ReadOk(data, st2)
        time.sleep(0.005 * (i + 1))  # a writer is active: give it a moment
    return "unstable"


def _state_of(st: os.stat_result, sha256: str | None) -> FileState:
    return FileState(sha256, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)


# ---- pending paths -------------------------------------------------------------------

Touch = Literal["commit", "modify", "gone", "now"]


@dataclass(slots=True)
class Pending:
    first: float
    deadline: float = math.inf
    committed: bool = False
    reconciled: bool = False
    queued_at: float = math.inf  # deadline of this path's live heap entry
    unstable: int = 0


@dataclass(slots=True)
class _Out:
    event: Event
    content: bytes | None
    undo: list[tuple[str, FileState | None]]  # (path, state before) to restore on failure
    retry: list[str]  # paths to look at again if the sink refused the batch
    metric: Literal["create", "modify", "delete", "rename"]
    first: float | None = None


@dataclass
class CaptureCounters:
    snapshots: int = 0
    deletes: int = 0
    renames: int = 0
    checks: int = 0
    sink_failures: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class Capturer:
    """Implements watch_tree.TreeListener; owns the pending paths and the version state."""

    def __init__(
        self,
        root: str,
        state: StateDB,
        sink: Sink,
        *,
        node: str = "",
        agent_version: str = "0",
        file_filter: FileFilter | None = None,
        identity: IdentityConfig | None = None,
        settings: CaptureSettings | None = None,
        metrics: FilemonMetrics | None = None,
        health: HealthLike | None = None,
        on_overflow: Callable[[], None] | None = None,
        side: SideFiles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = os.path.abspath(root)
        self.state = state
        self.sink = sink
        self.node = node
        self.agent_version = agent_version
        self.filter = file_filter or FileFilter()
        self.identity = identity or IdentityConfig()
        self.settings = settings or CaptureSettings()
        self.metrics = metrics
        self.health = health
        self.on_overflow = on_overflow or (lambda: None)
        self.side = side
        self.clock = clock
        self.counters = CaptureCounters()
        self._pending: dict[str, Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._out: list[_Out] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._sink_degraded = False
        self._state_failed = False  # the last state db write failed (full disk)
        self._state_retry: asyncio.TimerHandle | None = None

    # ---- wiring ---------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.arm()

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._state_retry is not None:
            self._state_retry.cancel()
            self._state_retry = None
        self._timer = None
        self._timer_at = math.inf
        self._loop = None

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def is_pending(self, rel: str) -> bool:
        return rel in self._pending

    # ---- classification -------------------------------------------------------------

    def classify(self, rel: str) -> Target | str:
        """The student file a path is, or a bounded skip reason."""
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return "bad_name"
        name = rel.rpartition("/")[2]
        reason = self.filter.reason_skipped(name)
        if reason is not None:
            return reason
        sp = parse_workspace_path(rel, self.identity)
        if isinstance(sp, NotStudent):
            ws = parse_workspace_dir(rel.partition("/")[0], self.identity)
            return "outside_assignment" if isinstance(ws, Workspace) else "not_student"
        if not sp.path:
            return "not_regular"
        return Target(sp.workspace.class_div, sp.workspace.student_id, sp.assignment, sp.path)

    def _skip(self, reason: str) -> None:
        self.counters.skipped[reason] = self.counters.skipped.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.skipped.labels(reason=reason).inc()

    # ---- TreeListener ---------------------------------------------------------------

    def file_event(self, rel: str, kind: FileEventKind) -> None:
        if self.side is not None and self.side.claims(rel):
            self.side.file_event(rel, kind)
            return
        target = self.classify(rel)
        if isinstance(target, str):
            if kind in ("closed", "moved_in", "found"):
                self._skip(target)
            return
        if kind in ("closed", "moved_in", "found"):
            self._touch(rel, "commit")
        elif kind in ("modified", "created"):
            self._touch(rel, "modify")
        else:
            self._touch(rel, "gone")

    def file_moved(self, old: str, new: str) -> None:
        if self.side is not None:
            side_old, side_new = self.side.claims(old), self.side.claims(new)
            if side_old or side_new:
                self.side.file_moved(old, new)
            if side_old and side_new:
                return
        self._rename(old, new)

    def dir_moved(self, old: str, new: str) -> None:
        if self.side is not None:
            self.side.dir_moved(old, new)
        for p in list(self.state.under(old)):
            self._rename(p, new + p[len(old) :])

    def dir_gone(self, rel: str) -> None:
        if self.side is not None:
            self.side.dir_gone(rel)
        for p in list(self.state.under(rel)):
            self._touch(p, "gone")

    def overflow(self) -> None:
        self.on_overflow()

    def batch_done(self) -> None:
        self.flush()
        self.arm()

    # ---- scans (scan.py) ------------------------------------------------------------

    def scan_found(self, rel: str, st: os.stat_result) -> None:
        """A file seen by a scan: look at it unless its state proves it unchanged."""
        if self.side is not None and self.side.claims(rel):
            self.side.scan_found(rel, st)
            return
        if rel in self._pending or isinstance(self.classify(rel), str):
            return
        old = self.state.get(rel)
        if old is not None and old.same_stat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return
        # Written moments ago: a writer may still be at it; give it the normal settle.
        recent = time.time() - st.st_mtime_ns / 1e9 < self.settings.settle_s
        self._touch(rel, "commit" if recent else "now", reconciled=True)

    def scan_missing(self, rel: str) -> None:
        """A path with state that a complete scan did not find."""
        if rel not in self._pending:
            self._touch(rel, "now", reconciled=True)

    # ---- scheduling -----------------------------------------------------------------

    def _touch(self, rel: str, how: Touch, *, reconciled: bool = False) -> None:
        now = self.clock()
        s = self.settings
        p = self._pending.get(rel)
        if p is None:
            p = Pending(first=now, reconciled=reconciled)
            self._pending[rel] = p
        elif not reconciled:
            p.reconciled = False  # a live event saw it: not (only) a scan finding
        if how == "now":
            p.committed = True
            dl = now
        elif how == "commit":
            p.committed = True
            dl = min(now + s.settle_s, p.first + s.settle_cap_s)
        elif how == "modify":
            dl = min(now + s.settle_s, p.first + s.settle_cap_s) if p.committed else now + s.quiet_s
        else:  # gone: the cap never forces a delete; a new file may be on its way
            dl = now + s.settle_s
        p.deadline = dl
        if dl < p.queued_at:
            p.queued_at = dl
            heapq.heappush(self._heap, (dl, next(self._seq), rel))

    def arm(self) -> None:
        """(Re)schedule the timer for the earliest deadline."""
        loop = self._loop
        if loop is None:
            return
        at = self._heap[0][0] if self._heap else math.inf
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at < math.inf:
            # loop.time() and time.monotonic() share a clock on Linux; convert anyway.
            self._timer = loop.call_at(loop.time() + (at - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        self.run_due()
        self.arm()

    def run_due(self) -> int:
        """Check the paths whose deadline has passed; returns how many were checked."""
        now = self.clock()
        done = 0
        limit = self.settings.checks_per_tick
        while self._heap and done < limit:
            dl, _, rel = self._heap[0]
            if dl > now:
                break
            heapq.heappop(self._heap)
            p = self._pending.get(rel)
            if p is None or p.queued_at != dl:
                continue  # superseded entry
            if p.deadline > now:
                p.queued_at = p.deadline
                heapq.heappush(self._heap, (p.deadline, next(self._seq), rel))
                continue
            del self._pending[rel]
            self._check(rel, p, now)
            done += 1
        self.flush()
        if done >= limit and self._loop is not None:
            # More is due: let inotify reads run in between, then continue.
            self._loop.call_soon(self._on_timer)
        return done

    # ---- the check ------------------------------------------------------------------

    def _check(self, rel: str, p: Pending, now: float) -> None:
        self.counters.checks += 1
        target = self.classify(rel)
        if isinstance(target, str):
            return
        path = os.path.join(self.root, rel)
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        old = self.state.get(rel)
        if st is None or not stat.S_ISREG(st.st_mode):
            if old is not None:
                self._emit_delete(rel, target, old, p)
            elif st is not None:
                self._skip("not_regular")
            return
        if old is not None and old.same_stat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return  # nothing written since the version we have
        r = read_stable(path, self.settings.max_file_bytes, self.settings.read_attempts)
        if r == "unstable":
            self._skip("unstable")
            if p.unstable < self.settings.unstable_retries:
                p.unstable += 1
                self._requeue(rel, p, now + self.settings.settle_s)
            return
        if r == "vanished":
            if old is not None:
                self._requeue(rel, p, now + self.settings.settle_s)
            else:
                self._skip("vanished")
            return
        if r == "not_regular":
            self._skip("not_regular")
            return
        assert isinstance(r, ReadOk)
        if r.data is None:
            self._emit_too_large(rel, target, old, r.st, p)
            return
        if b"\x00" in r.data[:BINARY_PROBE_BYTES]:
            self._skip("binary")
            return
        sha = hashlib.sha256(r.data).hexdigest()
        if old is not None and old.sha256 == sha:
            self.state.set(rel, _state_of(r.st, sha))  # same bytes rewritten: not a version
            return
        ev = FileSnapshot(
            **self._common(target),
            sha256=sha,
            size=len(r.data),
            mtime=_mtime(r.st),
            reconciled=p.reconciled,
        )
        self._push(
            _Out(ev, r.data, [], [rel], "create" if old is None else "modify", p.first),
            [(rel, _state_of(r.st, sha))],
        )

    def _requeue(self, rel: str, p: Pending, deadline: float) -> None:
        cur = self._pending.get(rel)
        if cur is not None:  # a newer event already re-marked it
            return
        p.deadline = deadline
        p.queued_at = deadline
        self._pending[rel] = p
        heapq.heappush(self._heap, (deadline, next(self._seq), rel))

    def _common(self, t: Target) -> dict[str, object]:
        return {
            "event_id": new_event_id(),
            "node": self.node,
            "agent": "filemon",
            "agent_version": self.agent_version,
            "ts": utcnow(),
            "class_div": t.class_div,
            "student_id": t.student_id,
            "assignment": t.assignment,
            "path": t.path,
        }

    def _emit_delete(self, rel: str, t: Target, old: FileState, p: Pending) -> None:
        ev = FileDelete(**self._common(t), reconciled=p.reconciled)
        self._push(_Out(ev, None, [], [rel], "delete", p.first), [(rel, None)])

    def _emit_too_large(
        self, rel: str, t: Target, old: FileState | None, st: os.stat_result, p: Pending
    ) -> None:
        if (
            old is not None
            and old.sha256 is None
            and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns)
        ):
            self.state.set(rel, _state_of(st, None))
            return
        ev = FileSnapshot(
            **self._common(t),
            sha256=None,
            size=st.st_size,
            mtime=_mtime(st),
            too_large=True,
            reconciled=p.reconciled,
        )
        metric: Literal["create", "modify"] = "create" if old is None else "modify"
        self._push(_Out(ev, None, [], [rel], metric, p.first), [(rel, _state_of(st, None))])

    def _rename(self, old: str, new: str) -> None:
        src = self.classify(old)
        dst = self.classify(new)
        st_old = self.state.get(old)
        if (
            isinstance(src, Target)
            and isinstance(dst, Target)
            and st_old is not None
            and src.scope == dst.scope
            and self.state.get(new) is None  # over an existing file: delete + new version
        ):
            ev = FileRename(
                **self._common(dst),
                old_path=src.path,
                sha256=st_old.sha256,
                size=st_old.size,
            )
            self._push(_Out(ev, None, [], [old, new], "rename"), [(old, None), (new, st_old)])
            self._touch(new, "commit")  # it may also have changed just before the move
            return
        if isinstance(src, Target):
            self._touch(old, "gone")
        if isinstance(dst, Target):
            self._touch(new, "commit")
        else:
            self._skip(dst)

    # ---- output ---------------------------------------------------------------------

    def _push(self, out: _Out, changes: list[tuple[str, FileState | None]]) -> None:
        # State moves on at once so later decisions in this batch see it; undone on failure.
        for rel, new in changes:
            out.undo.append((rel, self.state.get(rel)))
            if new is None:
                self.state.remove(rel)
            else:
                self.state.set(rel, new)
        self._out.append(out)

    def flush(self) -> None:
        if not self._out:
            if self._state_failed:
                self._flush_state()
            return
        out, self._out = self._out, []
        try:
            self.sink.put_many([(o.event, o.content) for o in out])
        except Exception as exc:
            self._sink_failed(out, exc)
            return
        sink_recovered, self._sink_degraded = self._sink_degraded, False
        now = self.clock()
        for o in out:
            if o.metric == "rename":
                self.counters.renames += 1
                if self.metrics is not None:
                    self.metrics.renames.inc()
                continue
            if o.metric == "delete":
                self.counters.deletes += 1
            else:
                self.counters.snapshots += 1
            if self.metrics is not None:
                self.metrics.file_events.labels(event_type=o.metric).inc()
                if o.first is not None:
                    self.metrics.capture_latency.observe(max(0.0, now - o.first))
        self._flush_state(sink_recovered)

    def _flush_state(self, sink_recovered: bool = False) -> None:
        """Write the version record; a failure (full disk) is kept for a later retry.

        The events are already in the outbox, and the record stays right in memory (the
        state db keeps the unwritten rows dirty), so a failed write only risks re-emitting
        versions after a crash: report it like a full outbox instead of raising.
        """
        was_degraded = self._state_failed or sink_recovered
        try:
            self.state.flush()
        except (sqlite3.Error, OSError) as exc:
            if not self._state_failed:
                log.warning("state db write failed (%s): retrying later", exc)
            self._state_failed = True
            self.counters.sink_failures += 1
            if self.metrics is not None:
                self.metrics.outbox_full.inc()  # same disk, same remedy: counted alike
            if self.health is not None:
                self.health.set_degraded("outbox_full", f"state db: {exc}"[:200])
            loop = self._loop
            if loop is not None and self._state_retry is None:
                self._state_retry = loop.call_later(
                    self.settings.retry_after_full_s, self._retry_state
                )
            return
        self._state_failed = False
        if was_degraded and not self._sink_degraded and self.health is not None:
            self.health.clear("outbox_full")

    def _retry_state(self) -> None:
        self._state_retry = None
        if self._state_failed:
            self.flush()

    def _sink_failed(self, out: list[_Out], exc: Exception) -> None:
        self.counters.sink_failures += 1
        log.warning("outbox refused %d events (%s): retrying later", len(out), exc)
        if self.metrics is not None:
            self.metrics.outbox_full.inc()
        if self.health is not None:
            self.health.set_degraded("outbox_full", str(exc)[:200])
        self._sink_degraded = True
        for o in reversed(out):
            for rel, prev in reversed(o.undo):
                if prev is None:
                    self.state.remove(rel)
                else:
                    self.state.set(rel, prev)
        retry_at = self.clock() + self.settings.retry_after_full_s
        for o in out:
            for rel in o.retry:
                p = self._pending.setdefault(rel, Pending(first=self.clock()))
                p.committed = True
                p.deadline = max(p.deadline if p.deadline < math.inf else 0.0, retry_at)
                p.queued_at = p.deadline
                heapq.heappush(self._heap, (p.deadline, next(self._seq), rel))

    def drain(self) -> int:
        """Shutdown: capture every committed path now (the next start's scan does the rest)."""
        now = self.clock()
        due = [rel for rel, p in self._pending.items() if p.committed]
        for rel in due:
            p = self._pending.pop(rel)
            self._check(rel, p, now)
        self.flush()
        return len(due)
