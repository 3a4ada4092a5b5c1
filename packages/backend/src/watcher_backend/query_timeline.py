"""One student's work in one assignment as a single time-ordered stream.

Saves (snapshots), deletes and renames, builds and runs, and notebook cells live in
different tables; each is read by its own indexed query and merged here. Pagination is
keyset-based (no OFFSET): the opaque cursor holds the last item's sort key
``(ts_us, source rank, row id)``, so pages never lose or repeat an item even while new
events arrive.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVarTuple

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import Connection, Select, and_, or_, select, true
from sqlalchemy.orm import InstrumentedAttribute

from watcher_backend import lookup
from watcher_backend.db.models import FileEventRow, FileRow, NotebookCellRow, RunRow, SnapshotRow
from watcher_common.timeutil import from_us

router = APIRouter()

TimelineKind = Literal["snapshot", "delete", "rename", "build", "run", "cell"]
ALL_KINDS: tuple[TimelineKind, ...] = ("snapshot", "delete", "rename", "build", "run", "cell")
BUILD_CATEGORIES = ("build", "buildtool")
MAX_LIMIT = 1000

# Tie-break between tables for events at the same microsecond: a save before the build
# that used it, a build before the run.
_RANK_SNAPSHOT, _RANK_FILE_EVENT, _RANK_RUN, _RANK_CELL = 0, 1, 2, 3


class TimelineItem(BaseModel):
    """One entry; fields not relevant to ``kind`` are null."""

    kind: TimelineKind
    ts: datetime
    id: int  # row id within its kind's table (snapshot id, run id, ...)
    path: str | None = None
    old_path: str | None = None
    snapshot_id: int | None = None
    size: int | None = None
    sha256: str | None = None
    source: str | None = None
    run_id: int | None = None
    category: str | None = None
    tool: str | None = None
    argv: list[str] | None = None
    exit_code: int | None = None
    signal: int | None = None
    end: datetime | None = None
    file_size: int | None = None
    diagnostics_count: int | None = None
    notebook: str | None = None
    cell_index: int | None = None
    execution_count: int | None = None
    status: str | None = None
    ename: str | None = None
    duration_ms: float | None = None


class TimelinePage(BaseModel):
    items: list[TimelineItem]
    next_cursor: str | None  # pass as ?cursor= for the next page; null on the last page


# Items are built as plain dicts in TimelineItem's shape and encoded by orjson: building and
# re-validating 200 pydantic models per page cost more CPU than the page's queries.
Item = dict[str, Any]
_BLANK: Item = dict.fromkeys(TimelineItem.model_fields)


def _item(**fields: Any) -> Item:
    return {**_BLANK, **fields}


Cursor = tuple[int, int, int]


def encode_cursor(key: Cursor) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}.{key[1]}.{key[2]}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        ts, rank, row = (int(p) for p in raw.split("."))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise HTTPException(
            422, "bad cursor: pass back the next_cursor of a previous page"
        ) from None
    return ts, rank, row


def _after(
    ts_col: InstrumentedAttribute[int],
    id_col: InstrumentedAttribute[int],
    rank: int,
    cursor: Cursor | None,
    upto: int | None,
) -> Any:
    """Rows of a table with ``rank`` that sort after ``cursor`` by (ts, rank, id), at or
    before time ``upto`` (None: no bound)."""
    cond = true() if upto is None else ts_col <= upto
    if cursor is None:
        return cond
    ts, c_rank, c_id = cursor
    if rank > c_rank:
        return and_(cond, ts_col >= ts)
    if rank < c_rank:
        return and_(cond, ts_col > ts)
    return and_(cond, or_(ts_col > ts, and_(ts_col == ts, id_col > c_id)))


_Ts = TypeVarTuple("_Ts")


def _page(stmt: Select[*_Ts], ts_col: Any, id_col: Any, limit: int) -> Select[*_Ts]:
    return stmt.order_by(ts_col, id_col).limit(limit)


def _snapshots(
    conn: Connection,
    s: lookup.StudentScope,
    cur: Cursor | None,
    upto: int | None,
    kinds: set[str],
    n: int,
) -> list[tuple[Cursor, Item]]:
    if "snapshot" not in kinds:
        return []
    rows = conn.execute(
        _page(
            select(
                SnapshotRow.id,
                SnapshotRow.ts_us,
                SnapshotRow.size,
                SnapshotRow.sha256,
                SnapshotRow.source,
                FileRow.path,
            )
            .join(FileRow, FileRow.id == SnapshotRow.file_id)
            .where(
                SnapshotRow.assignment_id == s.assignment_id,
                SnapshotRow.student_pk == s.student_pk,
                _after(SnapshotRow.ts_us, SnapshotRow.id, _RANK_SNAPSHOT, cur, upto),
            ),
            SnapshotRow.ts_us,
            SnapshotRow.id,
            n,
        )
    ).all()
    return [
        (
            (r.ts_us, _RANK_SNAPSHOT, r.id),
            _item(
                kind="snapshot",
                ts=from_us(r.ts_us),
                id=r.id,
                path=r.path,
                snapshot_id=r.id,
                size=r.size,
                sha256=r.sha256,
                source=r.source,
            ),
        )
        for r in rows
    ]


def _file_events(
    conn: Connection,
    s: lookup.StudentScope,
    cur: Cursor | None,
    upto: int | None,
    kinds: set[str],
    n: int,
) -> list[tuple[Cursor, Item]]:
    # create/modify rows duplicate the snapshots; only deletes and renames add information.
    ops = [op for op in ("delete", "rename") if op in kinds]
    if not ops:
        return []
    rows = conn.execute(
        _page(
            select(
                FileEventRow.id,
                FileEventRow.ts_us,
                FileEventRow.op,
                FileEventRow.old_path,
                FileRow.path,
            )
            .join(FileRow, FileRow.id == FileEventRow.file_id)
            .where(
                FileEventRow.assignment_id == s.assignment_id,
                FileEventRow.student_pk == s.student_pk,
                FileEventRow.op.in_(ops),
                _after(FileEventRow.ts_us, FileEventRow.id, _RANK_FILE_EVENT, cur, upto),
            ),
            FileEventRow.ts_us,
            FileEventRow.id,
            n,
        )
    ).all()
    return [
        (
            (r.ts_us, _RANK_FILE_EVENT, r.id),
            _item(
                kind="delete" if r.op == "delete" else "rename",
                ts=from_us(r.ts_us),
                id=r.id,
                path=r.path,
                old_path=r.old_path,
            ),
        )
        for r in rows
    ]


def _runs(
    conn: Connection,
    s: lookup.StudentScope,
    cur: Cursor | None,
    upto: int | None,
    kinds: set[str],
    n: int,
) -> list[tuple[Cursor, Item]]:
    want_build, want_run = "build" in kinds, "run" in kinds
    if not (want_build or want_run):
        return []
    stmt = select(
        RunRow.id,
        RunRow.start_us,
        RunRow.end_us,
        RunRow.category,
        RunRow.tool,
        RunRow.argv,
        RunRow.exit_code,
        RunRow.signal,
        RunRow.file_size,
        RunRow.diagnostics,
        RunRow.source,
    ).where(
        RunRow.student_pk == s.student_pk,
        RunRow.assignment_id == s.assignment_id,
        _after(RunRow.start_us, RunRow.id, _RANK_RUN, cur, upto),
    )
    if not want_run:
        stmt = stmt.where(RunRow.category.in_(BUILD_CATEGORIES))
    elif not want_build:
        stmt = stmt.where(RunRow.category.not_in(BUILD_CATEGORIES))
    rows = conn.execute(_page(stmt, RunRow.start_us, RunRow.id, n)).all()
    return [
        (
            (r.start_us, _RANK_RUN, r.id),
            _item(
                kind="build" if r.category in BUILD_CATEGORIES else "run",
                ts=from_us(r.start_us),
                id=r.id,
                run_id=r.id,
                category=r.category,
                tool=r.tool,
                argv=list(r.argv or []),
                exit_code=r.exit_code,
                signal=r.signal,
                end=from_us(r.end_us) if r.end_us is not None else None,
                file_size=r.file_size,
                diagnostics_count=len(r.diagnostics or []),
                source=r.source,
            ),
        )
        for r in rows
    ]


def _cells(
    conn: Connection,
    s: lookup.StudentScope,
    cur: Cursor | None,
    upto: int | None,
    kinds: set[str],
    n: int,
) -> list[tuple[Cursor, Item]]:
    if "cell" not in kinds:
        return []
    rows = conn.execute(
        _page(
            select(
                NotebookCellRow.id,
                NotebookCellRow.ts_us,
                NotebookCellRow.notebook,
                NotebookCellRow.cell_index,
                NotebookCellRow.execution_count,
                NotebookCellRow.status,
                NotebookCellRow.ename,
                NotebookCellRow.duration_ms,
            ).where(
                NotebookCellRow.assignment_id == s.assignment_id,
                NotebookCellRow.student_pk == s.student_pk,
                _after(NotebookCellRow.ts_us, NotebookCellRow.id, _RANK_CELL, cur, upto),
            ),
            NotebookCellRow.ts_us,
            NotebookCellRow.id,
            n,
        )
    ).all()
    return [
        (
            (r.ts_us, _RANK_CELL, r.id),
            _item(
                kind="cell",
                ts=from_us(r.ts_us),
                id=r.id,
                notebook=r.notebook,
                cell_index=r.cell_index,
                execution_count=r.execution_count,
                status=r.status,
                ename=r.ename,
                duration_ms=r.duration_ms,
            ),
        )
        for r in rows
    ]


def parse_kinds(text: str | None) -> set[str]:
    if not text:
        return set(ALL_KINDS)
    kinds = {k.strip() for k in text.split(",") if k.strip()}
    unknown = kinds - set(ALL_KINDS)
    if unknown:
        raise HTTPException(
            422, f"unknown kinds {sorted(unknown)}; choose from {', '.join(ALL_KINDS)}"
        )
    return kinds


def timeline_page(
    conn: Connection,
    scope: lookup.StudentScope,
    cursor: Cursor | None,
    kinds: set[str],
    limit: int,
) -> dict[str, Any]:
    """Each source yields at most ``limit + 1`` rows after the cursor; the first ``limit``
    of their merge are exactly the first ``limit`` of the whole stream."""
    merged: list[tuple[Cursor, Item]] = []
    upto: int | None = None
    for fetch in (_snapshots, _runs, _file_events, _cells):
        merged.extend(fetch(conn, scope, cursor, upto, kinds, limit + 1))
        if len(merged) > limit:
            # Once limit + 1 items are known, nothing later than the (limit + 1)-th can be
            # on this page: the next sources read only up to its time (a page of saves
            # then reads ~20 builds, not 201, and decodes only their diagnostics).
            merged.sort(key=lambda pair: pair[0])
            del merged[limit + 1 :]
            upto = merged[-1][0][0]
    merged.sort(key=lambda pair: pair[0])
    page = merged[:limit]
    more = len(merged) > limit
    return {
        "items": [item for _, item in page],
        "next_cursor": encode_cursor(page[-1][0]) if more and page else None,
    }


@router.get(
    "/classes/{class_div}/assignments/{hw_name}/students/{student_id}/timeline",
    response_model=TimelinePage,
)
def get_timeline(
    request: Request,
    class_div: str,
    hw_name: str,
    student_id: str,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 200,
    kinds: Annotated[
        str | None,
        Query(description="comma-separated subset of snapshot,delete,rename,build,run,cell"),
    ] = None,
) -> Response:
    """Oldest first, times in UTC. 404 if the class, assignment or student is unknown."""
    key = decode_cursor(cursor) if cursor else None
    wanted = parse_kinds(kinds)
    with request.app.state.engine.connect() as conn:
        scope = lookup.student_scope(conn, class_div, hw_name, student_id)
        if scope is None:
            raise HTTPException(404, "unknown class, assignment or student")
        page = timeline_page(conn, scope, key, wanted, limit)
    # OPT_UTC_Z: the same "...Z" times pydantic writes everywhere else in the API
    return Response(orjson.dumps(page, option=orjson.OPT_UTC_Z), media_type="application/json")
