"""Tail the Jupyter hook's cell logs (``.watcher-cells.jsonl``) into NotebookCell events.

The hook (packages/ipynb) appends one JSON line per executed cell next to the notebook.
Here each log is read from the offset kept in the state db, complete lines only (a line
still being written waits for its newline), and each valid line becomes one event in
the outbox; the offset moves on only after the outbox has accepted them. A crash in
between re-reads the same lines, and their event ids are derived from the line's bytes,
so the backend stores each cell once. A log that was replaced (new inode) or rewritten
from the start (its first bytes differ, or it shrank) is read again from offset 0.

The file is in the student's workspace: every line is validated, and bad ones counted.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import posixpath
import stat
from dataclasses import dataclass

from pydantic import ValidationError

from watcher_common.identity import IdentityConfig, StudentPath, parse_workspace_path
from watcher_common.wire import Event, NotebookCell
from watcher_filemon.capture import Sink
from watcher_filemon.metrics import FilemonMetrics
from watcher_filemon.state import CellLogState, StateDB
from watcher_filemon.watch_tree import FileEventKind
from watcher_ipynb.cellfmt import CELL_LOG_NAME, MAX_LINE_BYTES, CellRecord, parse_line

log = logging.getLogger(__name__)

HEAD_BYTES = 64  # the first line's id + timestamp: differs for every fresh file
READ_CHUNK = 4 << 20  # bytes read per log per turn; more is read on the next turn
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def is_cell_log(rel: str) -> bool:
    return rel.rpartition("/")[2] == CELL_LOG_NAME


def cell_event_id(class_div: str, student_id: str, line: bytes) -> str:
    """Same line of the same student → same id: re-reads are harmless at ingest.

    Each line carries the hook's random id and a µs timestamp, so distinct cells never
    collide; a copied log (a duplicated assignment folder) maps to the cells it records.
    """
    h = hashlib.sha256(f"{class_div}\0{student_id}\0".encode())
    h.update(line)
    return "nbc-" + h.hexdigest()[:40]


def notebook_below_assignment(log_path: str, notebook: str | None) -> str:
    """The notebook's path below the assignment, from the log's path and the line's
    (relative to the log's directory); "" when unknown or pointing outside."""
    if not notebook or "\x00" in notebook or notebook.startswith("/"):
        return ""
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(log_path), notebook))
    if joined in (".", "") or joined.startswith("../") or joined == "..":
        return ""
    return joined


@dataclass
class CellCounters:
    cells: int = 0
    bad_lines: int = 0
    sink_failures: int = 0


class CellTailer:
    """The capturer hands it every event and scan finding on a cell-log name."""

    def __init__(
        self,
        root: str,
        state: StateDB,
        sink: Sink,
        *,
        node: str = "",
        agent_version: str = "0",
        identity: IdentityConfig | None = None,
        metrics: FilemonMetrics | None = None,
        delay_s: float = 0.05,
        retry_s: float = 5.0,
    ) -> None:
        self.root = os.path.abspath(root)
        self.state = state
        self.sink = sink
        self.node = node
        self.agent_version = agent_version
        self.identity = identity or IdentityConfig()
        self.metrics = metrics
        self.delay_s = delay_s
        self.retry_s = retry_s
        self.counters = CellCounters()
        self._due: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    # ---- wiring (capture.SideFiles) ---------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._due:
            self._arm(self.delay_s)

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._loop = None

    def claims(self, rel: str) -> bool:
        return is_cell_log(rel)

    def file_event(self, rel: str, kind: FileEventKind) -> None:
        if kind == "gone":
            self.state.remove_cell_log(rel)
            self._due.discard(rel)
        else:
            self._touch(rel)

    def file_moved(self, old: str, new: str) -> None:
        prev = self.state.remove_cell_log(old) if is_cell_log(old) else None
        self._due.discard(old)
        if is_cell_log(new):
            if prev is not None:  # the same file under a new name: keep our place in it
                self.state.set_cell_log(new, prev)
            self._touch(new)

    def dir_moved(self, old: str, new: str) -> None:
        for p in self.state.cell_logs_under(old):
            s = self.state.remove_cell_log(p)
            if s is not None:
                self.state.set_cell_log(new + p[len(old) :], s)

    def dir_gone(self, rel: str) -> None:
        for p in self.state.cell_logs_under(rel):
            self.state.remove_cell_log(p)
            self._due.discard(p)

    def scan_found(self, rel: str, st: os.stat_result) -> None:
        s = self.state.cell_log(rel)
        if s is None or s.ino != st.st_ino or s.offset != st.st_size:
            self._touch(rel)

    @property
    def pending_count(self) -> int:
        return len(self._due)

    # ---- scheduling -------------------------------------------------------------------

    def _touch(self, rel: str) -> None:
        self._due.add(rel)
        self._arm(self.delay_s)

    def _arm(self, delay: float) -> None:
        if self._loop is None or self._timer is not None:
            return
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.run_due()
        if self._due:
            self._arm(self.delay_s)

    def run_due(self) -> int:
        """Read every log that was touched; returns how many events were stored."""
        due, self._due = self._due, set()
        total = 0
        for rel in sorted(due):
            total += self.tail(rel)
        return total

    def drain(self) -> int:
        """Shutdown: read what is there now (the next start's scan does the rest)."""
        return self.run_due()

    # ---- reading ----------------------------------------------------------------------

    def tail(self, rel: str) -> int:
        sp = parse_workspace_path(rel, self.identity)
        if not isinstance(sp, StudentPath) or not sp.path:
            return 0  # not inside an assignment directory: not watched for cells
        try:
            return self._tail(rel, sp)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                self.state.remove_cell_log(rel)
                self.state.flush()
                return 0
            log.warning("cell log not readable (%s): retrying later", exc.strerror)
            self._retry(rel)
            return 0

    def _tail(self, rel: str, sp: StudentPath) -> int:
        fd = os.open(os.path.join(self.root, rel), _O_READ)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return 0
            head = os.pread(fd, HEAD_BYTES, 0)
            old = self.state.cell_log(rel)
            offset = 0
            if (
                old is not None
                and old.ino == st.st_ino
                and old.offset <= st.st_size
                and head.startswith(old.head)
            ):
                offset = old.offset
            data = os.pread(fd, min(READ_CHUNK, st.st_size - offset), offset)
        finally:
            os.close(fd)
        end = data.rfind(b"\n") + 1
        if end == 0 and len(data) >= MAX_LINE_BYTES:
            end = len(data)  # no newline in a megabyte: garbage, skip past it
        lines = data[:end].splitlines()
        events: list[tuple[Event, bytes | None]] = []
        bad = 0
        for line in lines:
            if not line.strip():
                continue
            ev = self._event(sp, line)
            if ev is None:
                bad += 1
            else:
                events.append((ev, None))
        if events:
            try:
                self.sink.put_many(events)
            except Exception as exc:
                self.counters.sink_failures += 1
                log.warning("outbox refused %d notebook cells (%s): retrying", len(events), exc)
                if self.metrics is not None:
                    self.metrics.outbox_full.inc()
                self._retry(rel)
                return 0
        self.state.set_cell_log(rel, CellLogState(st.st_ino, offset + end, head))
        self.state.flush()
        self.counters.cells += len(events)
        self.counters.bad_lines += bad
        if self.metrics is not None:
            self.metrics.notebook_cells.inc(len(events))
            if bad:
                self.metrics.skipped.labels(reason="bad_cell_line").inc(bad)
        if offset + end < st.st_size and end > 0:
            self._due.add(rel)  # more than one chunk waiting: next turn
        return len(events)

    def _event(self, sp: StudentPath, line: bytes) -> NotebookCell | None:
        rec: CellRecord | None = parse_line(line)
        if rec is None:
            return None
        ws = sp.workspace
        try:
            return NotebookCell(
                event_id=cell_event_id(ws.class_div, ws.student_id, line),
                node=self.node,
                agent="filemon",
                agent_version=self.agent_version,
                ts=rec.ts,
                class_div=ws.class_div,
                student_id=ws.student_id,
                assignment=sp.assignment,
                notebook=notebook_below_assignment(sp.path, rec.notebook),
                execution_count=rec.execution_count,
                status=rec.status,
                ename=rec.ename,
                duration_ms=rec.duration_ms,
                source=rec.source,
            )
        except ValidationError:
            return None

    def _retry(self, rel: str) -> None:
        self._due.add(rel)
        if self._loop is not None and self._timer is None:
            self._timer = self._loop.call_later(self.retry_s, self._on_timer)
