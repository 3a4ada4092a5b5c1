"""Store wire events set-wise: a whole group commit's events in a few statements.

Per event, the old path cost ~7 statements + a SAVEPOINT (~200 µs); the ingest target
(≥ 20,000 events/s) leaves ~50 µs. So ``apply_batch`` works in three phases:

1. CPU work that needs no database (base64, sha256, zstd, JSON of argv/diagnostics) is
   done by ``prepare_event`` on the *request's* thread, so the writer thread (and the
   GIL it holds) is busy with database work only.
2. Planning, in Python and in event order: duplicates (one ``IN`` query per 500 ids, plus
   the ids earlier in the same batch), identity and content checks, known blob sizes (one
   ``IN`` query), then the ids of identity rows from an ``IdCache`` (misses are created
   on the spot: rare) and the file states, simulated in memory. Every check that can
   reject an event runs before anything is written for it, so a rejected event writes
   nothing — the same outcome a per-event savepoint gave.
3. One ``executemany`` per table, and one UPDATE per changed file.

Snapshot and run ids are allocated by the writer (``files``/``file_events``/``run_sources``
need them before the rows exist): on SQLite from ``MAX(id)`` under the write lock the
writer takes at BEGIN (it is the only writer, and a rowid table gives MAX+1 anyway), on
PostgreSQL from the column's sequence in one query (safe with other writers).

If the set-wise statements fail (a database constraint or data error), the writer rolls
back and re-runs the batch one event per SAVEPOINT to find the culprit.

The ``IdCache`` belongs to the single writer connection and must be cleared whenever a
transaction or savepoint rolls back. Statements go through ``db.rawsql`` (the driver
cursor inside SQLAlchemy's transaction) because this is the ingest hot path; the schema
is still ``db.models``.
"""

from __future__ import annotations

import binascii
import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
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
    EventResult,
    FileDelete,
    FileRename,
    FileSnapshot,
    NotebookCell,
    ProcessRun,
    ResultStatus,
)

from .blobs import (
    DICT_MAX,
    MIN_COMPRESS,
    PreparedBlob,
    pack_blob,
    pack_small_blobs,
    sha256_hex,
)
from .db.models import BLOB_KEY_CHARS
from .db.rawsql import RawSql, raw_for
from .wire_fast import FastEvent, FastFileDelete, FastFileRename, FastFileSnapshot

# A wire event as pydantic or, for the common file events, as a wire_fast mirror.
AnyEvent = Event | FastEvent
SnapshotEvent = FileSnapshot | FastFileSnapshot
_SNAPSHOT = (FileSnapshot, FastFileSnapshot)
_DELETE = (FileDelete, FastFileDelete)
_RENAME = (FileRename, FastFileRename)

# (event id, status, error): what the writer answers per event. A tuple, not an
# EventResult: building ~1,000 pydantic models per commit would cost the writer ~5 ms.
Outcome = tuple[str, ResultStatus, str | None]


def to_result(o: Outcome) -> EventResult:
    return EventResult(event_id=o[0], status=o[1], error=o[2])


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
        self.sequences: dict[str, str] = {}  # PostgreSQL: table -> its id sequence
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

# No ON CONFLICT: duplicates were filtered out while planning; a concurrent writer's
# insert of the same id fails the set-wise statements and the per-event retry answers it.
# The last columns of INS_EVENT, INS_BLOB and INS_SNAPSHOT are the same for a whole group
# of rows (kind, codec, node, ...): RawSql.insert_many binds them once per statement.
INS_EVENT = "INSERT INTO events (event_id, kind, received_us) VALUES (?, ?, ?)"
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
# SQLite (3.33+): the same for many files in one statement (RawSql.insert_many repeats
# its "VALUES (...)" row; rows are (id, deleted, last_sha256), ids unique per batch)
UPD_FILES_FROM = (
    "UPDATE files SET deleted = v.column2, last_sha256 = v.column3 "
    "FROM (VALUES (?, ?, ?)) AS v WHERE files.id = v.column1"
)

# Blobs already stored were found while planning (one IN query per 500): on SQLite the
# writer is the only writer, so nothing can conflict; PostgreSQL's concurrent writers
# have its unique sha256 index decide (see db.models.BlobRow).
_INS_BLOB = (
    "INSERT INTO blobs (sha256, size, stored_size, data, codec, created_us) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
INS_BLOB = {
    "sqlite": _INS_BLOB,
    "postgresql": f"{_INS_BLOB} ON CONFLICT (sha256) DO NOTHING",
}
INS_SNAPSHOT = (
    "INSERT INTO snapshots (id, event_id, file_id, student_pk, assignment_id, ts_us, size, "
    "sha256, source, reconciled, too_large, node, received_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INS_FILE_EVENT = (
    "INSERT INTO file_events (event_id, file_id, student_pk, assignment_id, op, ts_us, "
    "snapshot_id, old_path, reconciled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RUN_COLUMNS = (
    "id, event_id, class_id, student_pk, assignment_id, category, tool, exe, filename, argv, "
    "argv_truncated, argv_len, cwd, hostname, pid, ppid, uid, start_us, end_us, exit_code, "
    "signal, core_dumped, output_path, target_path, process_type, file_size, diagnostics, "
    "stderr_excerpt, identity_mismatch, source, node, received_us"
)
# constant text only (column names and placeholders), no values
INS_RUN = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES ({', '.join('?' * 32)})"  # noqa: S608
# Per-(assignment, student) snapshot totals (migration 0004): one aggregated upsert per
# pair per batch instead of 0003's row trigger on every snapshot insert.
_INS_STATS = (
    "INSERT INTO assignment_student_stats AS s "
    "(assignment_id, student_pk, snapshots, size_sum, last_ts_us) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (assignment_id, student_pk) DO UPDATE SET "
    "snapshots = s.snapshots + excluded.snapshots, "
    "size_sum = s.size_sum + excluded.size_sum, "
    "last_ts_us = {greatest}(s.last_ts_us, excluded.last_ts_us)"
)
INS_STATS = {
    "sqlite": _INS_STATS.format(greatest="max"),
    "postgresql": _INS_STATS.format(greatest="GREATEST"),
}
# snapshots per (assignment, size), for the compat percentiles (migration 0010)
INS_SIZES = (
    "INSERT INTO snapshot_size_counts AS c (assignment_id, size, snapshots) VALUES (?, ?, ?) "
    "ON CONFLICT (assignment_id, size) DO UPDATE SET snapshots = c.snapshots + excluded.snapshots"
)
INS_RUN_SOURCE = "INSERT INTO run_sources (run_id, path, sha256, size) VALUES (?, ?, ?, ?)"
INS_CELL = (
    "INSERT INTO notebook_cells (event_id, student_pk, assignment_id, notebook, ts_us, "
    "cell_index, execution_count, status, ename, duration_ms, source, node, received_us) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# ---- request side: the CPU part ----------------------------------------------------------


class Prepared(msgspec.Struct, gc=False):  # one per event: C __init__ (see PreparedBlob)
    """An event plus what the request thread computed for it (see the module docstring)."""

    event: AnyEvent
    blob: PreparedBlob | None = None  # verified, compressed inline content
    content_error: str | None = None  # why the inline content is unacceptable
    argv_json: str = ""  # process.run: argv and diagnostics as stored (JSON text)
    diagnostics_json: str = ""


def prepare_event(ev: AnyEvent) -> Prepared:
    """Decode, verify and compress inline content; serialise a run's JSON columns.

    Errors are kept, not raised: the writer answers them only after the duplicate and
    identity checks, in the order the agent has always seen.
    """
    if isinstance(ev, FastFileSnapshot):
        # msgspec has decoded content_b64 already (as strictly as binascii below)
        if ev.content is None:
            return Prepared(ev)
        return _prepare_content(ev, ev.content)
    if isinstance(ev, FileSnapshot):
        if ev.content_b64 is None:
            return Prepared(ev)
        try:
            # = b64decode(validate=True) without its regex pass (~8 µs per KiB)
            data = binascii.a2b_base64(ev.content_b64.encode("ascii"), strict_mode=True)
        except (binascii.Error, ValueError):
            return Prepared(ev, content_error="content_b64 is not valid base64")
        return _prepare_content(ev, data)
    if isinstance(ev, ProcessRun):
        return Prepared(
            ev,
            argv_json=json.dumps(list(ev.argv)),
            diagnostics_json=json.dumps([d.model_dump(mode="json") for d in ev.diagnostics]),
        )
    return Prepared(ev)


def prepare_events(events: Sequence[AnyEvent]) -> list[Prepared]:
    """``prepare_event`` for a request's events, with the common case inlined.

    A msgspec-decoded snapshot whose inline content is exactly right (the ~all case) is
    hashed here, and the small ones are compressed together at the end (one call into
    zstd per request: ``blobs.dict_compress_many``); anything else (no content, a wrong
    size or hash, pydantic events) goes through ``prepare_event``. The result is what
    ``prepare_event`` gives (a test compares them).
    """
    sha256 = hashlib.sha256
    out: list[Prepared] = []
    append = out.append
    small: list[PreparedBlob] = []  # raw for now: compressed below
    for ev in events:
        if type(ev) is FastFileSnapshot:
            data = ev.content
            sha = ev.sha256
            if data is not None and sha is not None:
                n = len(data)
                if n == ev.size and sha256(data).hexdigest() == sha:
                    # = pack_blob, the small files compressed together below
                    if n > DICT_MAX:
                        blob = pack_blob(sha, data)
                    else:
                        blob = PreparedBlob(sha, n, "raw", data)
                        if n >= MIN_COMPRESS:
                            small.append(blob)
                    append(Prepared(ev, blob))
                    continue
        append(prepare_event(ev))
    if small:
        pack_small_blobs(small)
    return out


def _prepare_content(ev: SnapshotEvent, data: bytes) -> Prepared:
    if len(data) != ev.size:
        return Prepared(ev, content_error=f"content is {len(data)} bytes but size says {ev.size}")
    if ev.sha256 is None:
        return Prepared(ev, content_error="sha256 is required with content_b64")
    if sha256_hex(data) != ev.sha256:
        return Prepared(ev, content_error="content_b64 does not match sha256")
    return Prepared(ev, blob=pack_blob(ev.sha256, data))


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


# ---- the set-wise batch ---------------------------------------------------------------

_IN_CHUNK = 500  # ids per IN (...) query: far below SQLite's and psycopg's parameter limits


def _chunks(values: list[str]) -> Iterator[list[str]]:
    for k in range(0, len(values), _IN_CHUNK):
        yield values[k : k + _IN_CHUNK]


def _in_list(n: int) -> str:
    return ", ".join("?" * n)


class _Batch:
    """Rows collected while planning one batch, written with one executemany per table."""

    def __init__(self, raw: RawSql, cache: IdCache, received: int) -> None:
        self.raw = raw
        self.cache = cache
        self.received = received
        # rows grouped by the values of their statement's shared last columns (see INS_*)
        self.events: dict[str, list[tuple[str]]] = {}  # kind -> (event_id,)
        self.blobs: dict[str, list[tuple[Any, ...]]] = {}  # codec -> rows
        # (source, reconciled, too_large, node) -> rows
        self.snapshots: dict[tuple[str, bool, bool, str], list[tuple[Any, ...]]] = {}
        self.file_events: list[tuple[Any, ...]] = []
        self.runs: list[tuple[Any, ...]] = []
        self.run_sources: list[tuple[Any, ...]] = []
        self.cells: list[tuple[Any, ...]] = []
        self.dirty: dict[int, FileState] = {}  # files whose state changed, by id
        # (assignment, student) -> [snapshots, size sum, latest ts] added by this batch
        self.stats: dict[tuple[int, int], list[int]] = {}
        # (assignment, size) -> snapshots of that size added by this batch
        self.sizes: Counter[tuple[int, int]] = Counter()
        self.snapshot_ids: Iterator[int] = iter(())
        self.run_ids: Iterator[int] = iter(())

    # -- ids the writer allocates ------------------------------------------------------

    def allocate_ids(self, table: str, n: int) -> Iterator[int]:
        if n == 0:
            return iter(())
        raw = self.raw
        if raw.dialect == "sqlite":
            # Safe: the writer holds the write lock since BEGIN IMMEDIATE; MAX(id) is one
            # b-tree seek. INTEGER PRIMARY KEY without AUTOINCREMENT would give MAX+1 too.
            top = raw.scalar(f"SELECT MAX(id) FROM {table}")  # noqa: S608 - constant table
            base = int(top or 0)
            return iter(range(base + 1, base + 1 + n))
        seq = self.cache.sequences.get(table)
        if seq is None:
            seq = self.cache.sequences[table] = str(
                raw.scalar("SELECT pg_get_serial_sequence(?, 'id')", (table,))
            )
        rows = raw.execute(
            "SELECT nextval(?::regclass) FROM generate_series(1, ?::int)", (seq, n)
        ).fetchall()
        return iter([int(r[0]) for r in rows])

    # -- identity ------------------------------------------------------------------------

    def check_student(self, ev: Any) -> tuple[int, int] | Workspace:
        """Cached (class id, student pk), else the checked workspace (Rejected if bad)."""
        ids = self.cache.students.get((ev.class_div, ev.student_id))
        if ids is not None:
            return ids
        return check_identity(ev.class_div, ev.student_id, self.cache.identity)

    def student(self, ev: Any, checked: tuple[int, int] | Workspace) -> tuple[int, int]:
        if isinstance(checked, tuple):
            return checked
        raw, cache = self.raw, self.cache
        cid = cache.classes.get(checked.class_div)
        if cid is None:
            cid = raw.scalar(SEL_CLASS, (checked.class_div,))
            if cid is None:
                cid = raw.insert_id(
                    INS_CLASS, (checked.class_div, checked.subject, checked.division)
                )
            cache.classes[checked.class_div] = cid = int(cid)
        pk = raw.scalar(SEL_STUDENT, (cid, ev.student_id))
        if pk is None:
            pk = raw.insert_id(INS_STUDENT, (cid, ev.student_id))
        ids = cache.students[(ev.class_div, ev.student_id)] = (cid, int(pk))
        return ids

    def assignment(self, class_id: int, name: str) -> int:
        key = (class_id, name)
        aid = self.cache.assignments.get(key)
        if aid is None:
            aid = self.raw.scalar(SEL_ASSIGNMENT, key)
            if aid is None:
                aid = self.raw.insert_id(INS_ASSIGNMENT, key)
            self.cache.assignments[key] = aid = int(aid)
        return aid

    def file(self, key: tuple[int, int, str]) -> FileState | None:
        state = self.cache.files.get(key)
        if state is None:
            row = self.raw.execute(SEL_FILE, key).fetchone()
            if row is None:
                return None
            state = self.cache.files[key] = FileState(int(row[0]), bool(row[1]), row[2])
        return state

    def create_file(
        self, key: tuple[int, int, str], ts_us: int, *, deleted: bool, last_sha256: str | None
    ) -> FileState:
        # Inserted at once (rare: once per file) so its id is known to the rows that follow.
        spk, aid, path = key
        fid = self.raw.insert_id(
            INS_FILE, (spk, aid, path, compat_name(path), ts_us, deleted, last_sha256)
        )
        state = self.cache.files[key] = FileState(fid, deleted, last_sha256)
        return state

    def set_file(self, state: FileState, *, deleted: bool, last_sha256: str | None) -> None:
        if state.deleted == deleted and state.last_sha256 == last_sha256:
            return
        state.deleted = deleted
        state.last_sha256 = last_sha256
        self.dirty[state.id] = state  # written once per file, with its final state

    def file_event(
        self,
        ev: Any,
        state: FileState,
        key: tuple[int, int, str],
        op: str,
        ts_us: int,
        old_path: str | None = None,
    ) -> None:
        # deletes and renames only; snapshot_id stays NULL (0008)
        self.file_events.append(
            (
                ev.event_id,
                state.id,
                key[0],
                key[1],
                op,
                ts_us,
                None,
                old_path,
                bool(getattr(ev, "reconciled", False)),
            )
        )

    # -- per kind: every check (raise) first, then writes ----------------------------------

    def snapshot(self, p: Prepared, ev: SnapshotEvent) -> None:
        # The hot path (~3,000 snapshots per commit): the cached cases inline, misses go
        # through the methods.
        checked = self.check_student(ev)
        cache = self.cache
        if p.content_error is not None:
            raise Rejected(p.content_error)
        blob = p.blob
        sha = ev.sha256
        size = ev.size
        if blob is None and sha is not None:
            known = cache.blob_sizes.get(sha)
            if known is None:
                if not ev.too_large:  # too_large: hashed but deliberately not uploaded
                    raise Retry("blob not uploaded")
            elif known != size:
                raise Rejected(f"blob {sha} is {known} bytes but size says {size}")
        elif blob is None and not (ev.too_large or ev.source == "compat"):
            raise Rejected(
                "snapshot has neither content_b64 nor sha256 "
                "(metadata-only is allowed only for too_large or source=compat)"
            )
        cid, spk = checked if isinstance(checked, tuple) else self.student(ev, checked)
        aid = cache.assignments.get((cid, ev.assignment))
        if aid is None:
            aid = self.assignment(cid, ev.assignment)
        key = (spk, aid, ev.path)
        if blob is not None and blob.sha256 not in cache.blob_sizes:  # blob.sha256 == sha
            blobs = self.blobs.get(blob.codec)
            if blobs is None:
                blobs = self.blobs[blob.codec] = []
            blobs.append((blob.sha256, size, len(blob.data), blob.data))
            cache.blob_sizes[blob.sha256] = size
        ts = to_us(ev.ts)
        state = cache.files.get(key) or self.file(key)
        if state is None:
            state = self.create_file(key, ts, deleted=False, last_sha256=sha)
        else:
            # A repeat of the last content is still a version the agent chose to
            # report: stored like any other (agents dedupe), only counted here.
            if not state.deleted and sha is not None and state.last_sha256 == sha:
                cache.unchanged_snapshots += 1
            if state.deleted or state.last_sha256 != sha:  # = set_file, inline
                state.deleted = False
                state.last_sha256 = sha
                self.dirty[state.id] = state
        totals = self.stats.get((aid, spk))
        if totals is None:
            self.stats[(aid, spk)] = [1, size, ts]
        else:
            totals[0] += 1
            totals[1] += size
            if ts > totals[2]:
                totals[2] = ts
        self.sizes[(aid, size)] += 1
        group = (ev.source, ev.reconciled, ev.too_large, ev.node)
        rows = self.snapshots.get(group)
        if rows is None:
            rows = self.snapshots[group] = []
        # No file_events row: the snapshot is the create/modify record (migration 0008).
        rows.append((next(self.snapshot_ids), ev.event_id, state.id, spk, aid, ts, size, sha))

    def delete(self, ev: FileDelete | FastFileDelete) -> None:
        cid, spk = self.student(ev, self.check_student(ev))
        key = (spk, self.assignment(cid, ev.assignment), ev.path)
        ts = to_us(ev.ts)
        state = self.file(key)
        if state is None:
            state = self.create_file(key, ts, deleted=True, last_sha256=None)
        else:
            self.set_file(state, deleted=True, last_sha256=state.last_sha256)
        self.file_event(ev, state, key, "delete", ts)

    def rename(self, ev: FileRename | FastFileRename) -> None:
        cid, spk = self.student(ev, self.check_student(ev))
        aid = self.assignment(cid, ev.assignment)
        ts = to_us(ev.ts)
        old = self.file((spk, aid, ev.old_path))
        sha = ev.sha256 if ev.sha256 is not None else (old.last_sha256 if old else None)
        if old is not None and ev.old_path != ev.path:
            self.set_file(old, deleted=True, last_sha256=old.last_sha256)
        key = (spk, aid, ev.path)
        new = self.file(key)
        if new is None:
            new = self.create_file(key, ts, deleted=False, last_sha256=sha)
        else:
            self.set_file(new, deleted=False, last_sha256=sha)
        self.file_event(ev, new, key, "rename", ts, old_path=ev.old_path)

    def run(self, p: Prepared, ev: ProcessRun) -> None:
        cid, spk = self.student(ev, self.check_student(ev))
        aid = self.assignment(cid, ev.assignment) if ev.assignment else None
        run_id = next(self.run_ids)
        self.runs.append(
            (
                run_id,
                ev.event_id,
                cid,
                spk,
                aid,
                ev.run_kind,
                ev.tool,
                ev.exe,
                ev.filename,
                p.argv_json,
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
                p.diagnostics_json,
                ev.stderr_excerpt,
                ev.identity_mismatch,
                ev.source,
                ev.node,
                self.received,
            )
        )
        self.run_sources.extend((run_id, s.path, s.sha256, s.size) for s in ev.source_files)

    def cell(self, ev: NotebookCell) -> None:
        cid, spk = self.student(ev, self.check_student(ev))
        aid = self.assignment(cid, ev.assignment) if ev.assignment else None
        self.cells.append(
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
                self.received,
            )
        )

    # -- writing ---------------------------------------------------------------------------

    def flush(self) -> None:
        raw = self.raw
        # Parents before children (foreign keys): events, blobs, snapshots, file_events...
        received = self.received
        for kind, ids in self.events.items():
            raw.insert_many(INS_EVENT, ids, (kind, received))
        for codec, blobs in self.blobs.items():
            raw.insert_many(INS_BLOB[raw.dialect], blobs, (codec, received))
        for (source, reconciled, too_large, node), rows in self.snapshots.items():
            raw.insert_many(INS_SNAPSHOT, rows, (source, reconciled, too_large, node, received))
        if self.snapshots:
            raw.insert_many(
                INS_STATS[raw.dialect], [(a, s, *t) for (a, s), t in self.stats.items()]
            )
            raw.insert_many(INS_SIZES, [(a, size, n) for (a, size), n in self.sizes.items()])
        if self.file_events:
            raw.insert_many(INS_FILE_EVENT, self.file_events)
        if self.runs:
            raw.insert_many(INS_RUN, self.runs)
        if self.run_sources:
            raw.insert_many(INS_RUN_SOURCE, self.run_sources)
        if self.cells:
            raw.insert_many(INS_CELL, self.cells)
        if self.dirty:
            rows = [(s.id, s.deleted, s.last_sha256) for s in self.dirty.values()]
            if raw.dialect == "sqlite":
                # one UPDATE ... FROM (VALUES ...) per 256 files, not one step per file
                raw.insert_many(UPD_FILES_FROM, rows)
            else:
                raw.executemany(UPD_FILE, [(d, sha, i) for i, d, sha in rows])


def _existing_ids(raw: RawSql, ids: list[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(ids):
        sql = f"SELECT event_id FROM events WHERE event_id IN ({_in_list(len(chunk))})"  # noqa: S608
        found.update(r[0] for r in raw.execute(sql, chunk).fetchall())
    return found


def _load_blob_sizes(raw: RawSql, cache: IdCache, shas: list[str]) -> None:
    """Cache the sizes of those of ``shas`` already stored (through the prefix index)."""
    wanted = set(shas)
    for chunk in _chunks(shas):
        sql = (
            f"SELECT sha256, size FROM blobs WHERE substr(sha256, 1, {BLOB_KEY_CHARS})"  # noqa: S608
            f" IN ({_in_list(len(chunk))})"
        )
        for sha, size in raw.execute(sql, [s[:BLOB_KEY_CHARS] for s in chunk]).fetchall():
            if sha in wanted:  # not another blob that shares the prefix
                cache.blob_sizes[sha] = int(size)


def apply_batch(conn: Connection, batch: Sequence[Prepared], cache: IdCache) -> list[Outcome]:
    """Store ``batch`` set-wise; one result per event, in order.

    ``stored``, ``duplicate`` (id seen before, in the database or earlier in the batch:
    nothing written), ``rejected`` / ``retry`` (checks failed: nothing written). Database
    errors propagate: the caller rolls back, clears ``cache`` and retries per event.
    """
    raw = raw_for(conn, cache.raw_holder)
    b = _Batch(raw, cache, now_us())
    existing = _existing_ids(raw, list({p.event.event_id for p in batch}))
    n_snap = n_run = 0
    unknown_shas: set[str] = set()
    for p in batch:
        ev = p.event
        if ev.event_id in existing:
            continue
        if isinstance(ev, _SNAPSHOT):
            n_snap += 1
            # inline or not: whether it is stored decides both checks and inserts
            if ev.sha256 is not None and ev.sha256 not in cache.blob_sizes:
                unknown_shas.add(ev.sha256)
        elif isinstance(ev, ProcessRun):
            n_run += 1
    if unknown_shas:
        _load_blob_sizes(raw, cache, sorted(unknown_shas))
    # Over-allocates when events are rejected: harmless gaps (ids need not be dense).
    b.snapshot_ids = b.allocate_ids("snapshots", n_snap)
    b.run_ids = b.allocate_ids("runs", n_run)

    results: list[Outcome] = []
    seen: set[str] = set()
    events = b.events
    for p in batch:
        ev = p.event
        eid = ev.event_id
        if eid in existing or eid in seen:
            results.append((eid, "duplicate", None))
            continue
        try:
            if isinstance(ev, _SNAPSHOT):
                b.snapshot(p, ev)
            elif isinstance(ev, ProcessRun):
                b.run(p, ev)
            elif isinstance(ev, _DELETE):
                b.delete(ev)
            elif isinstance(ev, _RENAME):
                b.rename(ev)
            elif isinstance(ev, NotebookCell):
                b.cell(ev)
            else:  # pragma: no cover - the wire union is closed
                raise Rejected(f"unsupported event kind {ev.kind!r}")
        except StoreError as exc:
            status: ResultStatus = "retry" if isinstance(exc, Retry) else "rejected"
            results.append((eid, status, exc.message))
            continue
        seen.add(eid)  # only a stored event makes later copies duplicates
        ids = events.get(ev.kind)
        if ids is None:
            ids = events[ev.kind] = []
        ids.append((eid,))
        results.append((eid, "stored", None))
    b.flush()
    return results
