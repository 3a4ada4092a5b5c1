"""ProgSnap2 export (role reader) of a class or one assignment, as a ZIP file.

Decisions (docs/analytics.md has the full table):

* **Subjects are pseudonymous**: ``SubjectID`` = HMAC-SHA256(per-export random salt,
  class/student id), 16 hex digits. The salt is never stored or returned, so two exports
  cannot be joined on SubjectID, and nobody can map SubjectIDs back to students. The
  student's own id is also redacted (→ SubjectID) wherever it appears verbatim in file
  paths, file contents, compiler messages and cell sources (students do write their id in
  a header comment). Argv, cwd and stderr are not exported at all (they hold paths that
  can name the workspace ``<subject>-<division>-<id>``).
* **Code states use the Directory representation**: a code state is the student's whole
  assignment directory at that moment (every live file with stored content), written as
  ``CodeStates/<CodeStateID>/<path>``. Every event carries the code state current at its
  time; identical directory states share one CodeStateID (HMAC of the sorted manifest).
* **Events**: a save → ``File.Edit`` (EditType ``GenericEdit``; we see saved versions, not
  keystrokes); ``File.Delete``; ``File.Rename`` (old path in ``X-OldCodeStateSection``); a
  compiler run → ``Compile`` (CompileResult Success/Error) followed by one
  ``Compile.Error`` / ``Compile.Warning`` per diagnostic (``ParentEventID`` = the Compile,
  ``SourceLocation`` = ``Text:<line>:<col>``); a program or interpreter run →
  ``Run.Program`` (``ProgramResult`` Success/Error, ``X-ExitCode``, ``X-Signal``); a
  notebook cell → ``Run.Program`` with ``X-RunKind`` = ``NotebookCell``. Build tools (make)
  and unclassified processes are not exported: their compiler runs are.
* **Order**: ``EventOrderScope`` = Restricted, ``EventOrderScopeColumns`` = SubjectID:
  within a subject, ``Order`` follows event time (ties: save, file event, run, cell — the
  timeline's order). ``ServerTimestamp`` is when the event happened, as captured by the
  cluster's agents (not a student-controlled clock), in Korea time with its offset;
  ``X-ReceivedTimestamp`` is when the backend received it.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse
from sqlalchemy import Connection, select
from starlette.background import BackgroundTask

from watcher_backend import __version__, lookup
from watcher_backend.analytics_sql import COMPILE_CATEGORY, RUN_CATEGORIES
from watcher_backend.blobs import load_blob
from watcher_backend.db.tables import (
    ASSIGNMENTS,
    FILE_EVENTS,
    FILES,
    NOTEBOOK_CELLS,
    RUNS,
    SNAPSHOTS,
    STUDENTS,
)
from watcher_common.timeutil import KST, from_us

router = APIRouter()

VERSION = "6"
TIMEZONE = "+09:00"
TOOL = f"JCode Watcher {__version__}"
REDACT_MIN_LEN = 5  # shorter ids would mangle ordinary text

COMMON = (
    "EventID",
    "SubjectID",
    "Order",
    "EventType",
    "ToolInstances",
    "CodeStateID",
    "ServerTimestamp",
    "ServerTimezone",
    "CourseID",
    "AssignmentID",
    "InterventionCategory",
    "X-ReceivedTimestamp",
)
_RUN = ("X-RunKind", "X-Tool", "X-ExitCode", "X-Signal")
_MESSAGE = (
    "ParentEventID",
    "CodeStateSection",
    "CompileMessageType",
    "CompileMessageData",
    "SourceLocation",
)
# Columns each event type may fill (the rest stay empty); the checker in the tests holds
# the spec's required columns independently.
ALLOWED: dict[str, tuple[str, ...]] = {
    "File.Edit": ("CodeStateSection", "EditType", "X-SizeOnly"),
    "File.Delete": ("CodeStateSection",),
    "File.Rename": ("CodeStateSection", "X-OldCodeStateSection"),
    "Compile": ("CompileResult", *_RUN),
    "Compile.Error": _MESSAGE,
    "Compile.Warning": _MESSAGE,
    "Run.Program": (
        "ProgramResult",
        *_RUN,
        "CodeStateSection",
        "X-CellIndex",
        "X-ExecutionCount",
        "X-ErrorName",
        "X-CellSource",
    ),
}
COLUMNS: tuple[str, ...] = COMMON + tuple(
    dict.fromkeys(c for cols in ALLOWED.values() for c in cols)
)

METADATA = (
    ("Version", VERSION),
    ("IsEventOrderingConsistent", "true"),
    ("EventOrderScope", "Restricted"),
    ("EventOrderScopeColumns", "SubjectID"),
    ("CodeStateRepresentation", "Directory"),
)

# Same-microsecond tie-break, as in the timeline: a save before the build that used it.
_SAVE, _FILE_EVENT, _RUN_RANK, _CELL = 0, 1, 2, 3


def subject_id(salt: bytes, class_div: str, student_id: str) -> str:
    msg = f"{class_div}/{student_id}".encode()
    return hmac.new(salt, msg, hashlib.sha256).hexdigest()[:16]


def _ts(us: int) -> str:
    return from_us(us).astimezone(KST).isoformat(timespec="microseconds")


@dataclass
class _Ctx:
    salt: bytes
    zf: zipfile.ZipFile
    table: Any  # csv writer of MainTable.csv
    class_div: str
    next_event: int = 1
    next_order: int = 1
    states_written: int = 0

    def __post_init__(self) -> None:
        self.code_states: set[str] = set()

    def emit(self, row: dict[str, Any]) -> int:
        """Write one MainTable row (EventID and Order assigned here); its EventID."""
        allowed = set(COMMON) | set(ALLOWED[row["EventType"]])
        extra = set(row) - allowed
        if extra:  # a bug here, never data: the checker would reject the dataset
            raise ValueError(f"{row['EventType']} may not have {sorted(extra)}")
        eid = self.next_event
        row = {**row, "EventID": eid, "Order": self.next_order}
        self.next_event += 1
        self.next_order += 1
        self.table.writerow([_cell(row.get(c)) for c in COLUMNS])
        return eid


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class _Student:
    """One student's directory state while their events are replayed in order."""

    def __init__(self, ctx: _Ctx, conn: Connection, spk: int, student_id: str) -> None:
        self.ctx, self.conn, self.spk = ctx, conn, spk
        self.sid = subject_id(ctx.salt, ctx.class_div, student_id)
        self.raw_id = student_id
        self.state: dict[tuple[str, str], str | None] = {}  # (assignment, path) → sha256
        self.blobs: dict[str, bytes | None] = {}
        self.current: dict[str, str] = {}  # assignment → CodeStateID (cached until a change)

    def redact(self, text: str) -> str:
        if len(self.raw_id) < REDACT_MIN_LEN:
            return text
        return text.replace(self.raw_id, self.sid)

    def changed(self, hw: str) -> None:
        self.current.pop(hw, None)

    def code_state(self, hw: str) -> str:
        cid = self.current.get(hw)
        if cid is not None:
            return cid
        files = sorted((p, s) for (a, p), s in self.state.items() if a == hw and s is not None)
        manifest = "\n".join(f"{p}\t{s}" for p, s in files).encode()
        cid = hmac.new(self.ctx.salt, manifest, hashlib.sha256).hexdigest()[:20]
        if cid not in self.ctx.code_states:
            self.ctx.code_states.add(cid)
            self._write_state(cid, files)
        self.current[hw] = cid
        return cid

    def _write_state(self, cid: str, files: list[tuple[str, str]]) -> None:
        zf = self.ctx.zf
        zf.writestr(f"CodeStates/{cid}/", b"")  # resolves even when empty
        for path, sha in files:
            if sha not in self.blobs:
                self.blobs[sha] = load_blob(self.conn, sha)
            data = self.blobs[sha]
            if data is None:
                continue
            if len(self.raw_id) >= REDACT_MIN_LEN:
                data = data.replace(self.raw_id.encode(), self.sid.encode())
            zf.writestr(f"CodeStates/{cid}/{self.redact(path)}", data)
        self.ctx.states_written += 1


def _events(conn: Connection, spk: int, asgs: dict[int, str]) -> Iterator[tuple[Any, ...]]:
    """The student's exported events, merged in (time, rank, id) order."""
    ids = list(asgs)
    items: list[tuple[Any, ...]] = []
    for r in conn.execute(
        select(
            SNAPSHOTS.c.id,
            SNAPSHOTS.c.ts_us,
            SNAPSHOTS.c.received_us,
            SNAPSHOTS.c.assignment_id,
            SNAPSHOTS.c.sha256,
            FILES.c.path,
        )
        .join(FILES, FILES.c.id == SNAPSHOTS.c.file_id)
        .where(SNAPSHOTS.c.student_pk == spk, SNAPSHOTS.c.assignment_id.in_(ids))
    ).all():
        items.append((r.ts_us, _SAVE, r.id, "save", r))
    for e in conn.execute(
        select(
            FILE_EVENTS.c.id,
            FILE_EVENTS.c.ts_us,
            FILE_EVENTS.c.op,
            FILE_EVENTS.c.old_path,
            FILE_EVENTS.c.assignment_id,
            FILES.c.path,
        )
        .join(FILES, FILES.c.id == FILE_EVENTS.c.file_id)
        .where(
            FILE_EVENTS.c.student_pk == spk,
            FILE_EVENTS.c.assignment_id.in_(ids),
            FILE_EVENTS.c.op.in_(("delete", "rename")),
        )
    ).all():
        items.append((e.ts_us, _FILE_EVENT, e.id, e.op, e))
    for x in conn.execute(
        select(
            RUNS.c.id,
            RUNS.c.start_us,
            RUNS.c.received_us,
            RUNS.c.assignment_id,
            RUNS.c.category,
            RUNS.c.tool,
            RUNS.c.exit_code,
            RUNS.c.signal,
            RUNS.c.diagnostics,
        ).where(
            RUNS.c.student_pk == spk,
            RUNS.c.assignment_id.in_(ids),
            RUNS.c.category.in_((COMPILE_CATEGORY, *RUN_CATEGORIES)),
        )
    ).all():
        items.append((x.start_us, _RUN_RANK, x.id, "run", x))
    for c in conn.execute(
        select(NOTEBOOK_CELLS).where(
            NOTEBOOK_CELLS.c.student_pk == spk, NOTEBOOK_CELLS.c.assignment_id.in_(ids)
        )
    ).all():
        items.append((c.ts_us, _CELL, c.id, "cell", c))
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    yield from items


def _source_location(d: dict[str, Any]) -> str | None:
    line, col = d.get("line"), d.get("column")
    if line is None:
        return None
    return f"Text:{line}:{col}" if col is not None else f"Text:{line}"


def _diag_path(file: str, hw: str) -> str | None:
    """A diagnostic's file below the assignment directory (never the absolute path, which
    can name the student's workspace)."""
    if not file:
        return None
    parts = file.split("/")
    if hw in parts:
        return "/".join(parts[len(parts) - parts[::-1].index(hw) :]) or None
    return parts[-1]


def _replay(st: _Student, asgs: dict[int, str]) -> None:
    ctx = st.ctx
    for ts, _, _, kind, r in _events(st.conn, st.spk, asgs):
        hw = asgs[r.assignment_id]
        base = {
            "SubjectID": st.sid,
            "ToolInstances": TOOL,
            "ServerTimestamp": _ts(ts),
            "ServerTimezone": TIMEZONE,
            "CourseID": ctx.class_div,
            "AssignmentID": hw,
        }
        if kind == "save":
            st.state[(hw, r.path)] = r.sha256
            st.changed(hw)
            ctx.emit({
                **base, "EventType": "File.Edit", "EditType": "GenericEdit",
                "CodeStateID": st.code_state(hw), "CodeStateSection": st.redact(r.path),
                "X-SizeOnly": r.sha256 is None, "X-ReceivedTimestamp": _ts(r.received_us),
            })  # fmt: skip
        elif kind == "delete":
            st.state.pop((hw, r.path), None)
            st.changed(hw)
            ctx.emit({
                **base, "EventType": "File.Delete", "CodeStateID": st.code_state(hw),
                "CodeStateSection": st.redact(r.path),
            })  # fmt: skip
        elif kind == "rename":
            if r.old_path is not None and (hw, r.old_path) in st.state:
                st.state[(hw, r.path)] = st.state.pop((hw, r.old_path))
            st.changed(hw)
            ctx.emit({
                **base, "EventType": "File.Rename", "CodeStateID": st.code_state(hw),
                "CodeStateSection": st.redact(r.path),
                "X-OldCodeStateSection": st.redact(r.old_path or ""),
            })  # fmt: skip
        elif kind == "run":
            _run(st, base, hw, r)
        else:
            ctx.emit({
                **base, "EventType": "Run.Program", "CodeStateID": st.code_state(hw),
                "ProgramResult": "Success" if r.status == "ok" else "Error",
                "X-RunKind": "NotebookCell", "X-Tool": "ipython",
                "CodeStateSection": st.redact(r.notebook) or None,
                "X-CellIndex": r.cell_index, "X-ExecutionCount": r.execution_count,
                "X-ErrorName": r.ename, "X-CellSource": st.redact(r.source or "") or None,
                "X-ReceivedTimestamp": _ts(r.received_us),
            })  # fmt: skip


def _run(st: _Student, base: dict[str, Any], hw: str, r: Any) -> None:
    ctx = st.ctx
    failed = r.signal is not None or (r.exit_code is not None and r.exit_code != 0)
    result = (
        None if r.exit_code is None and r.signal is None else ("Error" if failed else "Success")
    )
    common = {
        **base,
        "CodeStateID": st.code_state(hw),
        "X-Tool": r.tool,
        "X-ExitCode": r.exit_code,
        "X-Signal": r.signal,
        "X-ReceivedTimestamp": _ts(r.received_us),
    }
    if r.category != COMPILE_CATEGORY:
        kind = "Program" if r.category == "run" else "Interpreter"
        ctx.emit({**common, "EventType": "Run.Program", "ProgramResult": result,
                  "X-RunKind": kind})  # fmt: skip
        return
    parent = ctx.emit({**common, "EventType": "Compile", "CompileResult": result,
                       "X-RunKind": "Compiler"})  # fmt: skip
    for d in r.diagnostics or []:
        sev = d.get("severity", "error")
        if sev == "note":
            continue  # notes elaborate the error before them
        path = _diag_path(str(d.get("file", "")), hw)
        ctx.emit({
            **base, "EventType": "Compile.Warning" if sev == "warning" else "Compile.Error",
            "CodeStateID": common["CodeStateID"], "ParentEventID": parent,
            "CompileMessageType": sev, "CompileMessageData": st.redact(str(d.get("message", ""))),
            "SourceLocation": _source_location(d),
            "CodeStateSection": st.redact(path) if path else None,
            "X-ReceivedTimestamp": common["X-ReceivedTimestamp"],
        })  # fmt: skip


def write_progsnap2(
    conn: Connection, class_id: int, class_div: str, asgs: dict[int, str], path: Path
) -> int:
    """Write the dataset ZIP to ``path``; returns the number of MainTable events."""
    salt = os.urandom(32)
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf,
        tempfile.TemporaryFile("w+", encoding="utf-8", newline="") as table_file,
    ):
        table = csv.writer(table_file, lineterminator="\r\n")
        table.writerow(COLUMNS)
        ctx = _Ctx(salt, zf, table, class_div)
        for spk, student_id in conn.execute(
            select(STUDENTS.c.id, STUDENTS.c.student_id)
            .where(STUDENTS.c.class_id == class_id)
            .order_by(STUDENTS.c.id)
        ).all():
            _replay(_Student(ctx, conn, int(spk), str(student_id)), asgs)
        meta = "Property,Value\r\n" + "".join(f"{k},{v}\r\n" for k, v in METADATA)
        zf.writestr("DatasetMetadata.csv", meta)
        table_file.seek(0)
        with zf.open("MainTable.csv", "w") as out:
            while chunk := table_file.read(1 << 16):
                out.write(chunk.encode("utf-8"))
        return ctx.next_event - 1


@router.get(
    "/export/progsnap2",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def export_progsnap2(
    request: Request,
    class_div: str,
    assignment: Annotated[str | None, Query(description="one assignment (default all)")] = None,
) -> FileResponse:
    """The class (or one assignment) as a ProgSnap2 dataset, pseudonymised with a fresh
    salt on every call. Role reader: researchers need it, and it names no student."""
    with request.app.state.engine.connect() as conn:
        cls = lookup.class_id(conn, class_div)
        if cls is None:
            raise HTTPException(404, f"unknown class {class_div!r}")
        stmt = select(ASSIGNMENTS.c.id, ASSIGNMENTS.c.name).where(ASSIGNMENTS.c.class_id == cls)
        if assignment is not None:
            stmt = stmt.where(ASSIGNMENTS.c.name == assignment)
        asgs = {int(i): str(n) for i, n in conn.execute(stmt).all()}
        if assignment is not None and not asgs:
            raise HTTPException(404, f"unknown assignment {assignment!r}")
        fd, name = tempfile.mkstemp(prefix="progsnap2-", suffix=".zip")
        os.close(fd)
        try:
            write_progsnap2(conn, cls, class_div, asgs, Path(name))
        except BaseException:
            os.unlink(name)
            raise
    label = f"{class_div}-{assignment}" if assignment else class_div
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return FileResponse(
        name,
        media_type="application/zip",
        filename=f"{safe}-progsnap2.zip",
        background=BackgroundTask(os.unlink, name),
    )
