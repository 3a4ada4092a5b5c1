"""Apply one wire event to the database (called by the writer thread, inside a SAVEPOINT).

The ``events`` row is inserted first: a repeated event id is answered ``duplicate`` and
writes nothing else. Identity rows (class, student, assignment, file) are looked up
through an ``IdCache`` so the hot path rarely SELECTs; the cache belongs to the single
writer connection and must be cleared whenever a transaction or savepoint rolls back.

Statements go through ``db.rawsql`` (the driver cursor inside SQLAlchemy's transaction)
because this is the ingest hot path; the schema is still ``db.models``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Connection

from watcher_common.identity import (
    DEFAULT,
    IdentityConfig,
    NotStudent,
    Workspace,
    parse_workspace_dir,
)
from watcher_common.timeutil import now_us, to_us
from watcher_common.wire import (
    Event,
    FileDelete,
    FileRename,
    FileSnapshot,
    NotebookCell,
    ProcessRun,
)

from .blobs import prepare_blob, sha256_hex
from .db.rawsql import RawSql, raw_for

Applied = Literal["stored", "duplicate"]


class StoreError(Exception):
    """Base of the outcomes that are answered to the agent with a message."""

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class Retry(StoreError):
    """Not storable yet (e.g. its blob is not uploaded): the agent should send it again."""


class Rejected(StoreError):
    """Permanently unacceptable (bad content, bad identity): re-sending will not help."""


@dataclass(slots=True)
class FileState:
    id: int
    deleted: bool
    last_sha256: str | None


class IdCache:
    """Ids of identity rows and sizes of known blobs, owned by the writer's connection."""

    def __init__(self, max_entries: int = 500_000, identity: IdentityConfig | None = None) -> None:
        self.max_entries = max_entries
        self.identity = IdentityConfig.from_env() if identity is None else identity
        self.classes: dict[str, int] = {}
        self.students: dict[tuple[str, str], tuple[int, int]] = {}  # -> (class id, pk)
        self.assignments: dict[tuple[int, str], int] = {}
        self.files: dict[tuple[int, int, str], FileState] = {}
        self.blob_sizes: dict[str, int] = {}
        self.raw_holder: dict[str, Any] = {}  # the RawSql of the current connection
        self.unchanged_snapshots = 0  # versions equal to the file's last content

    def clear(self) -> None:
        self.classes.clear()
        self.students.clear()
        self.assignments.clear()
        self.files.clear()
        self.blob_sizes.clear()

    def trim(self) -> None:
        """Bound memory: forget everything when too big (it is only a cache)."""
        if len(self.files) + len(self.blob_sizes) + len(self.students) > self.max_entries:
            self.clear()


# ---- statements --------------------------------------------------------------------------

INS_EVENT = (
    "INSERT INTO events (event_id, kind, received_us) VALUES (?, ?, ?) "
    "ON CONFLICT (event_id) DO NOTHING"
)
SEL_CLASS = "SELECT id FROM classes WHERE class_div = ?"
INS_CLASS = "INSERT INTO classes (class_div, subject, division) VALUES (?, ?, ?)"
SEL_STUDENT = "SELECT id FROM students WHERE class_id = ? AND student_id = ?"
INS_STUDENT = "INSERT INTO students (class_id, student_id) VALUES (?, ?)"
SEL_ASSIGNMENT = "SELECT id FROM assignments WHERE class_id = ? AND name = ?"
INS_ASSIGNMENT = "INSERT INTO assignments (class_id, name) VALUES (?, ?)"
SEL_FILE = (
    "SELECT id, deleted, last_sha256 FROM files "
    "WHERE student_pk = ? AND assignment_id = ? AND path = ?"
)
INS_FILE = (
    "INSERT INTO files (student_pk, assignment_id, path, compat_name, created_us, deleted, "
    "last_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
UPD_FILE = "UPDATE files SET deleted = ?, last_sha256 = ? WHERE id = ?"
SEL_BLOB_SIZE = "SELECT size FROM blobs WHERE sha256 = ?"
INS_BLOB = (
    "INSERT INTO blobs (sha256, size, stored_size, codec, data, created_us) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sha256) DO NOTHING"
)
INS_SNAPSHOT = (
    "INSERT INTO snapshots (event_id, file_id, student_pk, assignment_id, ts_us, size, "
    "sha256, source, reconciled, too_large, node, received_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INS_FILE_EVENT = (
    "INSERT INTO file_events (event_id, file_id, student_pk, assignment_id, op, ts_us, "
    "snapshot_id, old_path, reconciled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RUN_COLUMNS = (
    "event_id, class_id, student_pk, assignment_id, category, tool, exe, filename, argv, "
    "argv_truncated, argv_len, cwd, hostname, pid, ppid, uid, start_us, end_us, exit_code, "
    "signal, core_dumped, output_path, target_path, process_type, file_size, diagnostics, "
    "stderr_excerpt, identity_mismatch, source, node, received_us"
)
# constant text only (column names and placeholders), no values
INS_RUN = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 31)})"  # noqa: S608
INS_RUN_SOURCE = "INSERT INTO run_sources (run_id, path, sha256, size) VALUES (?, ?, ?, ?)"
INS_CELL = (
    "INSERT INTO notebook_cells (event_id, student_pk, assignment_id, notebook, ts_us, "
    "cell_index, execution_count, status, ename, duration_ms, source, node, received_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# ---- identity --------------------------------------------------------------------------


def check_identity(class_div: str, student_id: str, cfg: IdentityConfig = DEFAULT) -> Workspace:
    """The workspace ``<class_div>-<student_id>`` names, or Rejected with the reason."""
    ws = parse_workspace_dir(f"{class_div}-{student_id}", cfg)
    if isinstance(ws, NotStudent):
        raise Rejected(f"identity: {ws.reason}")
    if ws.class_div != class_div or ws.student_id != student_id:
        raise Rejected("identity: class_div and student_id do not split unambiguously")
    return ws


def compat_name(path: str) -> str:
    return path.replace("/", "@")


def _class_id(raw: RawSql, cache: IdCache, ws: Workspace) -> int:
    class_div = ws.class_div
    cid = cache.classes.get(class_div)
    if cid is None:
        cid = raw.scalar(SEL_CLASS, (class_div,))
        if cid is None:
            cid = raw.insert_id(INS_CLASS, (class_div, ws.subject, ws.division))
        cache.classes[class_div] = cid
    return cid


def _student(raw: RawSql, cache: IdCache, ev: Any) -> tuple[int, int]:
    """(class id, student pk) of an event's class_div + student_id, created on first use."""
    name = (ev.class_div, ev.student_id)
    ids = cache.students.get(name)
    if ids is None:
        ws = check_identity(ev.class_div, ev.student_id, cache.identity)
        cid = _class_id(raw, cache, ws)
        pk = raw.scalar(SEL_STUDENT, (cid, ev.student_id))
        if pk is None:
            pk = raw.insert_id(INS_STUDENT, (cid, ev.student_id))
        ids = cache.students[name] = (cid, int(pk))
    return ids


def _assignment_id(raw: RawSql, cache: IdCache, class_id: int, name: str) -> int:
    key = (class_id, name)
    aid = cache.assignments.get(key)
    if aid is None:
        aid = raw.scalar(SEL_ASSIGNMENT, key)
        if aid is None:
            aid = raw.insert_id(INS_ASSIGNMENT, key)
        cache.assignments[key] = aid
    return aid


def _lookup_file(
    raw: RawSql, cache: IdCache, student_pk: int, assignment_id: int, path: str
) -> FileState | None:
    key = (student_pk, assignment_id, path)
    state = cache.files.get(key)
    if state is None:
        row = raw.execute(SEL_FILE, key).fetchone()
        if row is None:
            return None
        state = cache.files[key] = FileState(int(row[0]), bool(row[1]), row[2])
    return state


def _create_file(
    raw: RawSql,
    cache: IdCache,
    key: tuple[int, int, str],
    *,
    ts_us: int,
    deleted: bool,
    last_sha256: str | None,
) -> FileState:
    spk, aid, path = key
    fid = raw.insert_id(INS_FILE, (spk, aid, path, compat_name(path), ts_us, deleted, last_sha256))
    state = cache.files[key] = FileState(fid, deleted, last_sha256)
    return state


def _set_file_state(
    raw: RawSql, state: FileState, *, deleted: bool, last_sha256: str | None
) -> None:
    if state.deleted == deleted and state.last_sha256 == last_sha256:
        return
    raw.execute(UPD_FILE, (deleted, last_sha256, state.id))
    state.deleted = deleted
    state.last_sha256 = last_sha256


# ---- content ---------------------------------------------------------------------------


def _known_blob_size(raw: RawSql, cache: IdCache, sha256: str) -> int | None:
    size = cache.blob_sizes.get(sha256)
    if size is None:
        size = raw.scalar(SEL_BLOB_SIZE, (sha256,))
        if size is not None:
            cache.blob_sizes[sha256] = size = int(size)
    return size


def _snapshot_content(raw: RawSql, cache: IdCache, ev: FileSnapshot, now: int) -> None:
    """Check (and for inline content, store) the content a snapshot refers to."""
    if ev.content_b64 is not None:
        try:
            data = base64.b64decode(ev.content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected("content_b64 is not valid base64") from None
        if len(data) != ev.size:
            raise Rejected(f"content is {len(data)} bytes but size says {ev.size}")
        if ev.sha256 is None:
            raise Rejected("sha256 is required with content_b64")
        if sha256_hex(data) != ev.sha256:
            raise Rejected("content_b64 does not match sha256")
        if ev.sha256 not in cache.blob_sizes:
            # Insert-or-ignore instead of SELECT-then-INSERT: new content is the common
            # case, and compressing a ≤64 KiB inline file is cheaper than a round trip.
            b = prepare_blob(ev.sha256, data)
            raw.execute(INS_BLOB, (b.sha256, b.size, len(b.data), b.codec, b.data, now))
            cache.blob_sizes[ev.sha256] = len(data)
        return
    if ev.sha256 is not None:
        size = _known_blob_size(raw, cache, ev.sha256)
        if size is None:
            if ev.too_large:
                return  # the agent hashed it but does not upload oversized files
            raise Retry("blob not uploaded")
        if size != ev.size:
            raise Rejected(f"blob {ev.sha256} is {size} bytes but size says {ev.size}")
        return
    if not (ev.too_large or ev.source == "compat"):
        raise Rejected(
            "snapshot has neither content_b64 nor sha256 "
            "(metadata-only is allowed only for too_large or source=compat)"
        )


# ---- per kind --------------------------------------------------------------------------


def _file_event(
    raw: RawSql,
    ev: Any,
    state: FileState,
    key: tuple[int, int, str],
    op: str,
    ts_us: int,
    *,
    snapshot_id: int | None = None,
    old_path: str | None = None,
) -> None:
    raw.execute(
        INS_FILE_EVENT,
        (
            ev.event_id,
            state.id,
            key[0],
            key[1],
            op,
            ts_us,
            snapshot_id,
            old_path,
            bool(getattr(ev, "reconciled", False)),
        ),
    )


def _apply_snapshot(raw: RawSql, cache: IdCache, ev: FileSnapshot, received: int) -> None:
    cid, spk = _student(raw, cache, ev)
    key = (spk, _assignment_id(raw, cache, cid, ev.assignment), ev.path)
    _snapshot_content(raw, cache, ev, received)
    ts = to_us(ev.ts)
    state = _lookup_file(raw, cache, *key)
    if state is None:
        op = "create"
        state = _create_file(raw, cache, key, ts_us=ts, deleted=False, last_sha256=ev.sha256)
    else:
        # A repeat of the last content is still a version the agent chose to report:
        # stored like any other (agents dedupe), only counted here.
        if not state.deleted and ev.sha256 is not None and state.last_sha256 == ev.sha256:
            cache.unchanged_snapshots += 1
        op = "create" if state.deleted else "modify"
        _set_file_state(raw, state, deleted=False, last_sha256=ev.sha256)
    snapshot_id = raw.insert_id(
        INS_SNAPSHOT,
        (
            ev.event_id,
            state.id,
            spk,
            key[1],
            ts,
            ev.size,
            ev.sha256,
            ev.source,
            ev.reconciled,
            ev.too_large,
            ev.node,
            received,
        ),
    )
    _file_event(raw, ev, state, key, op, ts, snapshot_id=snapshot_id)


def _apply_delete(raw: RawSql, cache: IdCache, ev: FileDelete) -> None:
    cid, spk = _student(raw, cache, ev)
    key = (spk, _assignment_id(raw, cache, cid, ev.assignment), ev.path)
    ts = to_us(ev.ts)
    state = _lookup_file(raw, cache, *key)
    if state is None:
        state = _create_file(raw, cache, key, ts_us=ts, deleted=True, last_sha256=None)
    else:
        _set_file_state(raw, state, deleted=True, last_sha256=state.last_sha256)
    _file_event(raw, ev, state, key, "delete", ts)


def _apply_rename(raw: RawSql, cache: IdCache, ev: FileRename) -> None:
    cid, spk = _student(raw, cache, ev)
    aid = _assignment_id(raw, cache, cid, ev.assignment)
    ts = to_us(ev.ts)
    old = _lookup_file(raw, cache, spk, aid, ev.old_path)
    sha = ev.sha256 if ev.sha256 is not None else (old.last_sha256 if old else None)
    if old is not None and ev.old_path != ev.path:
        _set_file_state(raw, old, deleted=True, last_sha256=old.last_sha256)
    key = (spk, aid, ev.path)
    new = _lookup_file(raw, cache, *key)
    if new is None:
        new = _create_file(raw, cache, key, ts_us=ts, deleted=False, last_sha256=sha)
    else:
        _set_file_state(raw, new, deleted=False, last_sha256=sha)
    _file_event(raw, ev, new, key, "rename", ts, old_path=ev.old_path)


def _apply_run(raw: RawSql, cache: IdCache, ev: ProcessRun, received: int) -> None:
    cid, spk = _student(raw, cache, ev)
    aid = _assignment_id(raw, cache, cid, ev.assignment) if ev.assignment else None
    run_id = raw.insert_id(
        INS_RUN,
        (
            ev.event_id,
            cid,
            spk,
            aid,
            ev.run_kind,
            ev.tool,
            ev.exe,
            ev.filename,
            json.dumps(list(ev.argv)),
            ev.argv_truncated,
            ev.argv_len,
            ev.cwd,
            ev.hostname,
            ev.pid,
            ev.ppid,
            ev.uid,
            to_us(ev.start),
            to_us(ev.end) if ev.end is not None else None,
            ev.exit_code,
            ev.signal,
            ev.core_dumped,
            ev.output_path,
            ev.target_path,
            ev.process_type,
            sum(s.size or 0 for s in ev.source_files),
            json.dumps([d.model_dump(mode="json") for d in ev.diagnostics]),
            ev.stderr_excerpt,
            ev.identity_mismatch,
            ev.source,
            ev.node,
            received,
        ),
    )
    if ev.source_files:
        raw.executemany(
            INS_RUN_SOURCE, [(run_id, s.path, s.sha256, s.size) for s in ev.source_files]
        )


def _apply_cell(raw: RawSql, cache: IdCache, ev: NotebookCell, received: int) -> None:
    cid, spk = _student(raw, cache, ev)
    aid = _assignment_id(raw, cache, cid, ev.assignment) if ev.assignment else None
    raw.execute(
        INS_CELL,
        (
            ev.event_id,
            spk,
            aid,
            ev.notebook,
            to_us(ev.ts),
            ev.cell_index,
            ev.execution_count,
            ev.status,
            ev.ename,
            ev.duration_ms,
            ev.source,
            ev.node,
            received,
        ),
    )


def apply_event(conn: Connection, event: Event, cache: IdCache) -> Applied:
    """Store one event; "duplicate" if its id was seen before (then nothing is written).

    Raises ``Retry`` / ``Rejected``; the caller rolls back the event's SAVEPOINT and clears
    ``cache`` (it may hold ids created inside the rolled-back savepoint).
    """
    raw = raw_for(conn, cache.raw_holder)
    received = now_us()
    if not raw.insert_ignore(INS_EVENT, (event.event_id, event.kind, received)):
        return "duplicate"
    if isinstance(event, FileSnapshot):
        _apply_snapshot(raw, cache, event, received)
    elif isinstance(event, ProcessRun):
        _apply_run(raw, cache, event, received)
    elif isinstance(event, FileDelete):
        _apply_delete(raw, cache, event)
    elif isinstance(event, FileRename):
        _apply_rename(raw, cache, event)
    elif isinstance(event, NotebookCell):
        _apply_cell(raw, cache, event, received)
    else:  # pragma: no cover - the wire union is closed
        raise Rejected(f"unsupported event kind {event.kind!r}")
    return "stored"
