"""Query API v1 (role reader): classes, students, files, versions, content, diffs, runs.

Reads are plain synchronous SQLAlchemy Core on ``app.state.engine`` in ``def`` endpoints
(FastAPI runs them in its thread pool), never through the writer. Times are UTC.
Unknown names or ids are 404 here (unlike the compat API, which must answer empty).
"""

from __future__ import annotations

import difflib
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from sqlalchemy import Connection, case, exists, func, select

from watcher_backend import lookup, query_timeline
from watcher_backend.auth import require_reader
from watcher_backend.blobs import is_blob, load_blob
from watcher_backend.db.models import (
    AssignmentRow,
    BlobRow,
    ClassRow,
    FileRow,
    NotebookCellRow,
    RunRow,
    RunSourceRow,
    SnapshotRow,
    StudentRow,
)
from watcher_backend.db.tables import RUNS
from watcher_common.timeutil import from_us

# Row ids are SQLite/PostgreSQL 64-bit integers: a larger number can name nothing, and
# binding it would fail in the driver (a 500) instead of answering 404.
_ID_MIN, _ID_MAX = -(2**63), 2**63 - 1
SnapshotId = Annotated[int, Path(ge=_ID_MIN, le=_ID_MAX)]
RunId = Annotated[int, Path(ge=_ID_MIN, le=_ID_MAX)]

router = APIRouter(prefix="/api/v1", tags=["query"], dependencies=[Depends(require_reader)])
router.include_router(query_timeline.router)

_BUILD = query_timeline.BUILD_CATEGORIES


class ClassInfo(BaseModel):
    class_div: str
    subject: str
    division: str
    students: int
    assignments: int


class AssignmentInfo(BaseModel):
    name: str
    students: int  # students with at least one snapshot
    snapshots: int
    builds: int
    runs: int
    first_snapshot: datetime | None
    last_snapshot: datetime | None


class StudentInfo(BaseModel):
    student_id: str
    files: int
    snapshots: int
    builds: int
    runs: int
    cells: int
    last_activity: datetime | None


class FileInfo(BaseModel):
    file_id: int
    path: str
    compat_name: str  # the old API's name for it (path with "/" → "@")
    deleted: bool
    versions: int
    first_version: datetime | None
    last_version: datetime | None
    last_size: int | None
    last_sha256: str | None


class SnapshotInfo(BaseModel):
    snapshot_id: int
    class_div: str
    student_id: str
    assignment: str
    path: str
    ts: datetime
    size: int
    sha256: str | None  # null: metadata only (compat, or too large to keep)
    has_content: bool
    source: str
    too_large: bool
    reconciled: bool
    node: str


class RunSourceInfo(BaseModel):
    path: str
    sha256: str | None
    size: int | None
    snapshot_id: int | None  # a snapshot of this student holding exactly that content


class DiagnosticInfo(BaseModel):
    file: str = ""
    line: int | None = None
    column: int | None = None
    severity: str = "error"
    message: str


class RunDetail(BaseModel):
    run_id: int
    class_div: str
    student_id: str
    assignment: str | None
    category: str
    tool: str
    exe: str
    filename: str
    argv: list[str]
    argv_truncated: bool
    argv_len: int | None
    cwd: str
    hostname: str
    pid: int | None
    ppid: int | None
    uid: int | None
    start: datetime
    end: datetime | None
    duration_ms: float | None
    exit_code: int | None
    signal: int | None
    core_dumped: bool
    output_path: str | None
    target_path: str | None
    process_type: str | None
    file_size: int
    diagnostics: list[DiagnosticInfo]
    stderr_excerpt: str | None
    identity_mismatch: bool
    source: str
    node: str
    received: datetime
    sources: list[RunSourceInfo]


def _dt(us: int | None) -> datetime | None:
    return from_us(us) if us is not None else None


def _class_or_404(conn: Connection, class_div: str) -> int:
    cls = lookup.class_id(conn, class_div)
    if cls is None:
        raise HTTPException(404, f"unknown class {class_div!r}")
    return cls


def _scope_or_404(
    conn: Connection, class_div: str, hw_name: str, student_id: str
) -> lookup.StudentScope:
    scope = lookup.student_scope(conn, class_div, hw_name, student_id)
    if scope is None:
        raise HTTPException(404, "unknown class, assignment or student")
    return scope


@router.get("/classes")
def list_classes(request: Request) -> list[ClassInfo]:
    with request.app.state.engine.connect() as conn:
        students = dict(
            conn.execute(
                select(StudentRow.class_id, func.count()).group_by(StudentRow.class_id)
            ).all()
        )
        assignments = dict(
            conn.execute(
                select(AssignmentRow.class_id, func.count()).group_by(AssignmentRow.class_id)
            ).all()
        )
        rows = conn.execute(
            select(ClassRow.id, ClassRow.class_div, ClassRow.subject, ClassRow.division).order_by(
                ClassRow.class_div
            )
        ).all()
    return [
        ClassInfo(
            class_div=r.class_div,
            subject=r.subject,
            division=r.division,
            students=students.get(r.id, 0),
            assignments=assignments.get(r.id, 0),
        )
        for r in rows
    ]


def _is_build() -> Any:
    return case((RunRow.category.in_(_BUILD), 1), else_=0)


@router.get("/classes/{class_div}/assignments")
def list_assignments(request: Request, class_div: str) -> list[AssignmentInfo]:
    with request.app.state.engine.connect() as conn:
        cls = _class_or_404(conn, class_div)
        asgs = conn.execute(
            select(AssignmentRow.id, AssignmentRow.name)
            .where(AssignmentRow.class_id == cls)
            .order_by(AssignmentRow.name)
        ).all()
        ids = [a.id for a in asgs]
        snaps = {
            r[0]: r
            for r in conn.execute(
                select(
                    SnapshotRow.assignment_id,
                    func.count(),
                    func.count(SnapshotRow.student_pk.distinct()),
                    func.min(SnapshotRow.ts_us),
                    func.max(SnapshotRow.ts_us),
                )
                .where(SnapshotRow.assignment_id.in_(ids))
                .group_by(SnapshotRow.assignment_id)
            ).all()
        }
        runs = {
            r[0]: r
            for r in conn.execute(
                select(RunRow.assignment_id, func.sum(_is_build()), func.count())
                .where(RunRow.class_id == cls, RunRow.assignment_id.in_(ids))
                .group_by(RunRow.assignment_id)
            ).all()
        }
    out = []
    for a in asgs:
        s = snaps.get(a.id)
        r = runs.get(a.id)
        builds = int(r[1] or 0) if r else 0
        out.append(
            AssignmentInfo(
                name=a.name,
                students=int(s[2]) if s else 0,
                snapshots=int(s[1]) if s else 0,
                builds=builds,
                runs=int(r[2]) - builds if r else 0,
                first_snapshot=_dt(s[3]) if s else None,
                last_snapshot=_dt(s[4]) if s else None,
            )
        )
    return out


@router.get("/classes/{class_div}/students")
def list_students(
    request: Request,
    class_div: str,
    assignment: Annotated[str | None, Query(description="count only this assignment")] = None,
) -> list[StudentInfo]:
    """Every student of the class with activity counts (all assignments, or one)."""
    with request.app.state.engine.connect() as conn:
        cls = _class_or_404(conn, class_div)
        asg: int | None = None
        if assignment is not None:
            asg = lookup.assignment_id(conn, cls, assignment)
            if asg is None:
                raise HTTPException(404, f"unknown assignment {assignment!r}")

        def scoped(stmt: Any, column: Any) -> Any:
            return stmt.where(column == asg) if asg is not None else stmt

        in_class = select(StudentRow.id).where(StudentRow.class_id == cls).scalar_subquery()
        snaps = {
            r[0]: r
            for r in conn.execute(
                scoped(
                    select(SnapshotRow.student_pk, func.count(), func.max(SnapshotRow.ts_us))
                    .where(SnapshotRow.student_pk.in_(in_class))
                    .group_by(SnapshotRow.student_pk),
                    SnapshotRow.assignment_id,
                )
            ).all()
        }
        files = dict(
            conn.execute(
                scoped(
                    select(FileRow.student_pk, func.count())
                    .where(FileRow.student_pk.in_(in_class))
                    .group_by(FileRow.student_pk),
                    FileRow.assignment_id,
                )
            ).all()
        )
        runs = {
            r[0]: r
            for r in conn.execute(
                scoped(
                    select(
                        RunRow.student_pk,
                        func.sum(_is_build()),
                        func.count(),
                        func.max(RunRow.start_us),
                    )
                    .where(RunRow.class_id == cls)
                    .group_by(RunRow.student_pk),
                    RunRow.assignment_id,
                )
            ).all()
        }
        cells = {
            r[0]: r
            for r in conn.execute(
                scoped(
                    select(
                        NotebookCellRow.student_pk, func.count(), func.max(NotebookCellRow.ts_us)
                    )
                    .where(NotebookCellRow.student_pk.in_(in_class))
                    .group_by(NotebookCellRow.student_pk),
                    NotebookCellRow.assignment_id,
                )
            ).all()
        }
        students = conn.execute(
            select(StudentRow.id, StudentRow.student_id)
            .where(StudentRow.class_id == cls)
            .order_by(StudentRow.student_id)
        ).all()
    out = []
    for st in students:
        s, r, c = snaps.get(st.id), runs.get(st.id), cells.get(st.id)
        builds = int(r[1] or 0) if r else 0
        last = [x for x in (s[2] if s else None, r[3] if r else None, c[2] if c else None) if x]
        out.append(
            StudentInfo(
                student_id=st.student_id,
                files=int(files.get(st.id, 0)),
                snapshots=int(s[1]) if s else 0,
                builds=builds,
                runs=int(r[2]) - builds if r else 0,
                cells=int(c[1]) if c else 0,
                last_activity=_dt(max(last)) if last else None,
            )
        )
    return out


_FILE_BASE = "/classes/{class_div}/assignments/{hw_name}/students/{student_id}/files"


@router.get(_FILE_BASE)
def list_files(request: Request, class_div: str, hw_name: str, student_id: str) -> list[FileInfo]:
    """The student's files in the assignment (deleted ones too), by path."""
    with request.app.state.engine.connect() as conn:
        scope = _scope_or_404(conn, class_div, hw_name, student_id)
        stats = (
            select(
                SnapshotRow.file_id,
                func.count().label("n"),
                func.min(SnapshotRow.ts_us).label("first"),
                func.max(SnapshotRow.ts_us).label("last"),
            )
            .where(
                SnapshotRow.assignment_id == scope.assignment_id,
                SnapshotRow.student_pk == scope.student_pk,
            )
            .group_by(SnapshotRow.file_id)
            .subquery()
        )
        last_size = (
            select(SnapshotRow.size)
            .where(SnapshotRow.file_id == FileRow.id)
            .order_by(SnapshotRow.ts_us.desc(), SnapshotRow.id.desc())
            .limit(1)
            .correlate(FileRow)
            .scalar_subquery()
        )
        rows = conn.execute(
            select(
                FileRow.id,
                FileRow.path,
                FileRow.compat_name,
                FileRow.deleted,
                FileRow.last_sha256,
                stats.c.n,
                stats.c.first,
                stats.c.last,
                last_size.label("last_size"),
            )
            .outerjoin(stats, stats.c.file_id == FileRow.id)
            .where(
                FileRow.student_pk == scope.student_pk,
                FileRow.assignment_id == scope.assignment_id,
            )
            .order_by(FileRow.path)
        ).all()
    return [
        FileInfo(
            file_id=r.id,
            path=r.path,
            compat_name=r.compat_name,
            deleted=bool(r.deleted),
            versions=int(r.n or 0),
            first_version=_dt(r.first),
            last_version=_dt(r.last),
            last_size=r.last_size,
            last_sha256=r.last_sha256,
        )
        for r in rows
    ]


# whether a version's content is stored (EXISTS: one row per version, whatever the blobs)
_HAS_BLOB = exists().where(is_blob(BlobRow.sha256, SnapshotRow.sha256)).label("has_blob")


def _snapshot_query() -> Any:
    return (
        select(
            SnapshotRow.id,
            ClassRow.class_div,
            StudentRow.student_id,
            AssignmentRow.name.label("assignment"),
            FileRow.path,
            SnapshotRow.ts_us,
            SnapshotRow.size,
            SnapshotRow.sha256,
            _HAS_BLOB,
            SnapshotRow.source,
            SnapshotRow.too_large,
            SnapshotRow.reconciled,
            SnapshotRow.node,
        )
        .join(FileRow, FileRow.id == SnapshotRow.file_id)
        .join(StudentRow, StudentRow.id == SnapshotRow.student_pk)
        .join(ClassRow, ClassRow.id == StudentRow.class_id)
        .join(AssignmentRow, AssignmentRow.id == SnapshotRow.assignment_id)
    )


def _snapshot_info(r: Any) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=r.id,
        class_div=r.class_div,
        student_id=r.student_id,
        assignment=r.assignment,
        path=r.path,
        ts=from_us(r.ts_us),
        size=r.size,
        sha256=r.sha256,
        has_content=bool(r.has_blob),
        source=r.source,
        too_large=bool(r.too_large),
        reconciled=bool(r.reconciled),
        node=r.node,
    )


@router.get(_FILE_BASE + "/versions", response_model=list[SnapshotInfo])
def list_versions(
    request: Request,
    class_div: str,
    hw_name: str,
    student_id: str,
    path: Annotated[str, Query(description="path below the assignment directory")],
) -> Response:
    """Every saved version of one file, oldest first."""
    with request.app.state.engine.connect() as conn:
        scope = _scope_or_404(conn, class_div, hw_name, student_id)
        file_id = conn.execute(
            select(FileRow.id).where(
                FileRow.student_pk == scope.student_pk,
                FileRow.assignment_id == scope.assignment_id,
                FileRow.path == path,
            )
        ).scalar()
        if file_id is None:
            raise HTTPException(404, f"unknown file {path!r}")
        rows = conn.execute(
            select(
                SnapshotRow.id,
                SnapshotRow.ts_us,
                SnapshotRow.size,
                SnapshotRow.sha256,
                _HAS_BLOB,
                SnapshotRow.source,
                SnapshotRow.too_large,
                SnapshotRow.reconciled,
                SnapshotRow.node,
            )
            .where(SnapshotRow.file_id == file_id)
            .order_by(SnapshotRow.ts_us, SnapshotRow.id)
        ).all()
    # Class, student, assignment and path are the same for every version: taken from the
    # request (as stored: the scope lookup matched them exactly), not joined per row; plain
    # dicts in SnapshotInfo's shape through orjson (2,000 versions: ~70 -> ~15 ms CPU).
    return Response(
        orjson.dumps(
            [
                {
                    "snapshot_id": r.id,
                    "class_div": class_div,
                    "student_id": student_id,
                    "assignment": hw_name,
                    "path": path,
                    "ts": from_us(r.ts_us),
                    "size": r.size,
                    "sha256": r.sha256,
                    "has_content": bool(r.has_blob),
                    "source": r.source,
                    "too_large": bool(r.too_large),
                    "reconciled": bool(r.reconciled),
                    "node": r.node,
                }
                for r in rows
            ],
            option=orjson.OPT_UTC_Z,
        ),
        media_type="application/json",
    )


def _snapshot_row(conn: Connection, snapshot_id: int) -> Any:
    row = conn.execute(_snapshot_query().where(SnapshotRow.id == snapshot_id)).first()
    if row is None:
        raise HTTPException(404, f"unknown snapshot {snapshot_id}")
    return row


@router.get("/snapshots/{snapshot_id}")
def get_snapshot(request: Request, snapshot_id: SnapshotId) -> SnapshotInfo:
    with request.app.state.engine.connect() as conn:
        return _snapshot_info(_snapshot_row(conn, snapshot_id))


class _BlobCache:
    """Recently read file contents by sha256, decompressed. Content-addressed, so an entry
    can never be stale; replay reads the same versions again and again (A, B, A → C ...)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.items: OrderedDict[str, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, conn: Connection, sha256: str) -> bytes | None:
        with self.lock:
            data = self.items.get(sha256)
            if data is not None:
                self.items.move_to_end(sha256)
                return data
        data = load_blob(conn, sha256)
        if data is not None and len(data) <= self.max_bytes // 8:
            with self.lock:
                if sha256 not in self.items:
                    self.items[sha256] = data
                    self.size += len(data)
                while self.size > self.max_bytes:
                    self.size -= len(self.items.popitem(last=False)[1])
        return data


_blobs = _BlobCache(32 << 20)


def _content(conn: Connection, snapshot_id: int) -> tuple[Any, bytes | None]:
    row = _snapshot_row(conn, snapshot_id)
    data = _blobs.get(conn, row.sha256) if row.sha256 is not None else None
    return row, data


# A snapshot row never changes and its content is addressed by its sha256, so a content or
# diff answer for given ids is the same forever: the browser may keep it (private: it is a
# student's code, never for shared caches) and revalidate by ETag without the blob reads.
_KEEP = "private, max-age=86400, immutable"


def _not_modified(request: Request, etag: str) -> Response | None:
    if etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": _KEEP})
    return None


@router.get(
    "/snapshots/{snapshot_id}/content",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def get_snapshot_content(request: Request, snapshot_id: SnapshotId) -> Response:
    """The exact bytes of that version; 404 if only its size and time are known."""
    with request.app.state.engine.connect() as conn:
        row = _snapshot_row(conn, snapshot_id)
        etag = f'"{row.sha256}"'
        # stored content: the ETag is known before the blob is read
        if bool(row.has_blob) and (cached := _not_modified(request, etag)) is not None:
            return cached
        data = _blobs.get(conn, row.sha256) if bool(row.has_blob) else None
    if data is None:
        raise HTTPException(404, f"snapshot {snapshot_id} has no stored content (metadata only)")
    return Response(
        content=data,
        media_type="application/octet-stream",
        headers={"ETag": etag, "Cache-Control": _KEEP},
    )


def _text(conn: Connection, snapshot_id: int) -> tuple[Any, str]:
    row, data = _content(conn, snapshot_id)
    if data is None:
        raise HTTPException(422, f"snapshot {snapshot_id} has no stored content (metadata only)")
    try:
        if b"\x00" in data:
            raise UnicodeDecodeError("utf-8", data, 0, 1, "NUL byte")
        return row, data.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(422, f"snapshot {snapshot_id} is binary, not UTF-8 text") from None


def unified_diff(old: str, new: str, old_label: str, new_label: str) -> str:
    """``diff -u`` style text, with git's marker for a last line without newline."""
    out = []
    for line in difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), old_label, new_label
    ):
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


@router.get(
    "/diff",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}}},
)
def get_diff(
    request: Request,
    from_id: Annotated[
        int, Query(alias="from", ge=_ID_MIN, le=_ID_MAX, description="snapshot id (old)")
    ],
    to_id: Annotated[
        int, Query(alias="to", ge=_ID_MIN, le=_ID_MAX, description="snapshot id (new)")
    ],
) -> Response:
    """Unified diff between two versions (any two snapshots); empty when identical.
    404 for an unknown id, 422 when either is metadata-only or binary."""
    with request.app.state.engine.connect() as conn:
        a, old = _text(conn, from_id)
        b, new = _text(conn, to_id)
    # the labels (paths, times) and both contents are fixed by the two ids
    etag = f'"d{from_id}-{to_id}"'
    if (cached := _not_modified(request, etag)) is not None:
        return cached
    label_a = f"a/{a.path}\t{from_us(a.ts_us).isoformat()}"
    label_b = f"b/{b.path}\t{from_us(b.ts_us).isoformat()}"
    return PlainTextResponse(
        unified_diff(old, new, label_a, label_b),
        headers={"ETag": etag, "Cache-Control": _KEEP},
    )


def _snapshot_with_hash(conn: Connection, run: Any, sha256: str) -> int | None:
    """A snapshot of the run's student holding ``sha256``: the latest saved at or before
    the run started, else the first saved after it (capture can lag the exec) — looked
    for in the run's assignment first, then in the student's other assignments.

    There is no index on ``snapshots.sha256`` (0009: random keys were too dear for
    ingest); each scope walks the student's saves through the (assignment, student, ts)
    index from the run's start outwards, and the version the run used is normally the
    first row it meets (capture-on-exec stores it at the start).
    """
    scopes: list[list[int]] = []
    if run.assignment_id is not None:
        scopes.append([run.assignment_id])
    others = select(FileRow.assignment_id).where(FileRow.student_pk == run.student_pk)
    if run.assignment_id is not None:
        others = others.where(FileRow.assignment_id != run.assignment_id)
    scopes.append(sorted(set(conn.execute(others.distinct()).scalars())))
    for assignments in scopes:
        if not assignments:
            continue
        base = select(SnapshotRow.id).where(
            SnapshotRow.assignment_id.in_(assignments),
            SnapshotRow.student_pk == run.student_pk,
            SnapshotRow.sha256 == sha256,
        )
        before = conn.execute(
            base.where(SnapshotRow.ts_us <= run.start_us)
            .order_by(SnapshotRow.ts_us.desc(), SnapshotRow.id.desc())
            .limit(1)
        ).scalar()
        if before is not None:
            return int(before)
        after = conn.execute(
            base.where(SnapshotRow.ts_us > run.start_us)
            .order_by(SnapshotRow.ts_us, SnapshotRow.id)
            .limit(1)
        ).scalar()
        if after is not None:
            return int(after)
    return None


@router.get("/runs/{run_id}")
def get_run(request: Request, run_id: RunId) -> RunDetail:
    """Everything known about one process run, with the exact code state it used."""
    with request.app.state.engine.connect() as conn:
        run = conn.execute(
            select(
                RUNS,
                ClassRow.class_div,
                StudentRow.student_id.label("student_num"),
                AssignmentRow.name.label("assignment"),
            )
            .join(ClassRow, ClassRow.id == RunRow.class_id)
            .join(StudentRow, StudentRow.id == RunRow.student_pk)
            .outerjoin(AssignmentRow, AssignmentRow.id == RunRow.assignment_id)
            .where(RunRow.id == run_id)
        ).first()
        if run is None:
            raise HTTPException(404, f"unknown run {run_id}")
        sources = [
            RunSourceInfo(
                path=s.path,
                sha256=s.sha256,
                size=s.size,
                snapshot_id=_snapshot_with_hash(conn, run, s.sha256) if s.sha256 else None,
            )
            for s in conn.execute(
                select(RunSourceRow.path, RunSourceRow.sha256, RunSourceRow.size)
                .where(RunSourceRow.run_id == run_id)
                .order_by(RunSourceRow.id)
            ).all()
        ]
    return RunDetail(
        run_id=run.id,
        class_div=run.class_div,
        student_id=run.student_num,
        assignment=run.assignment,
        category=run.category,
        tool=run.tool,
        exe=run.exe,
        filename=run.filename,
        argv=list(run.argv or []),
        argv_truncated=bool(run.argv_truncated),
        argv_len=run.argv_len,
        cwd=run.cwd,
        hostname=run.hostname,
        pid=run.pid,
        ppid=run.ppid,
        uid=run.uid,
        start=from_us(run.start_us),
        end=_dt(run.end_us),
        duration_ms=(run.end_us - run.start_us) / 1000 if run.end_us is not None else None,
        exit_code=run.exit_code,
        signal=run.signal,
        core_dumped=bool(run.core_dumped),
        output_path=run.output_path,
        target_path=run.target_path,
        process_type=run.process_type,
        file_size=run.file_size or 0,
        diagnostics=[DiagnosticInfo.model_validate(d) for d in run.diagnostics or []],
        stderr_excerpt=run.stderr_excerpt,
        identity_mismatch=bool(run.identity_mismatch),
        source=run.source,
        node=run.node,
        received=from_us(run.received_us),
        sources=sources,
    )
