"""The old JCode-Watcher write paths (used by old agents and the old Jupyter hook).

Each POST becomes one wire event (``source="compat"``) and goes through the same group-commit
writer as ``/api/v1/events``, so compat data and agent data share one storage path. The event
id is derived from the request (``compat-`` + SHA-256 of kind, path parameters and canonical
body), so re-sending the same POST is stored once and answered like the first time.

Fixes over the old service: unparseable timestamps, negative sizes and bad identities are a
422 with a message (never a 500 and never silently stored); names with ``#``, ``?``, ``@``,
spaces or Korean are kept intact (clients percent-encode them; FastAPI decodes).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shlex
import sqlite3
import threading
import weakref
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from sqlalchemy import Engine, select
from starlette.concurrency import run_in_threadpool

from watcher_backend import compat_names, lookup
from watcher_backend.auth import require_agent
from watcher_backend.db.models import FileRow, SnapshotRow
from watcher_common import identity
from watcher_common.timeutil import KST
from watcher_common.wire import Event, EventResult, FileSnapshot, ProcessRun, SourceFile

router = APIRouter(tags=["compat"], dependencies=[Depends(require_agent)])

AGENT = "compat"
AGENT_VERSION = "1"
_STAMP_RE = re.compile(r"(\d{8}_\d{6})(\.[^/]*)?")
_HW_MAX = 128

Text4k = Annotated[str, StringConstraints(max_length=4096)]


def parse_old_timestamp(value: Any) -> datetime:
    """The old bodies' ``timestamp``: ISO-8601 (naive = Korea time) or ``YYYYMMDD_HHMMSS``.

    Numbers are taken as Unix seconds. Anything else raises ValueError (→ 422).
    """
    if isinstance(value, bool):
        raise ValueError("timestamp must be an ISO-8601 date-time")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    if not isinstance(value, str):
        raise ValueError("timestamp must be an ISO-8601 date-time")
    text = value.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        try:
            parsed = datetime.strptime(text, "%Y%m%d_%H%M%S")
        except ValueError:
            raise ValueError(f"timestamp {value!r} is not an ISO-8601 date-time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=KST)


class _OldBody(BaseModel):
    # Old clients may send fields we do not know; ignoring them keeps them working.
    model_config = ConfigDict(extra="ignore")


class BuildLogIn(_OldBody):
    binary_path: Text4k = ""
    cmdline: Annotated[str, StringConstraints(max_length=131072)] = ""
    exit_code: int | None = None
    cwd: Text4k = ""
    target_path: Text4k | None = None
    timestamp: datetime

    @field_validator("timestamp", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> datetime:
        return parse_old_timestamp(v)


class RunLogIn(BuildLogIn):
    process_type: Annotated[str, StringConstraints(max_length=32)] | None = None


class SnapshotIn(_OldBody):
    bytes: Annotated[int, Field(ge=0, le=2**53)]


class Message(BaseModel):
    message: str


def compat_event_id(kind: str, params: list[str], body: BaseModel) -> str:
    """Deterministic id: a repeated identical POST is the same event (stored once)."""
    return compat_event_id_of(kind, params, body.model_dump(mode="json"))


def compat_event_id_of(kind: str, params: list[str], dumped: dict[str, Any]) -> str:
    """``compat_event_id`` from the body's JSON-mode dump (the fast path has no model)."""
    canonical = _CANONICAL.encode([kind, params, dumped])
    return "compat-" + hashlib.sha256(canonical.encode()).hexdigest()


# = json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False), without
# building an encoder per call (half of its cost for these small values).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@lru_cache(maxsize=1)
def identity_config() -> identity.IdentityConfig:
    # The same WATCHER_* naming rules as the agents, so compat data is named alike.
    return identity.IdentityConfig.from_env()


# Identities that passed check_identity: the rules are fixed for the process (the config
# is read once), so a valid identity stays valid; bounded, it is only a cache (~40 µs saved).
_VALID_IDENTITIES: dict[tuple[str, str, str], identity.IdentityConfig] = {}
_VALID_IDENTITIES_MAX = 50_000


def check_identity(class_div: str, student_id: str, hw_name: str) -> None:
    """422 unless ``<class_div>-<student_id>`` is a student workspace and ``hw_name`` an
    assignment directory name (the agents' rules, ``WATCHER_*_PATTERN``)."""
    cfg = identity_config()
    key = (class_div, student_id, hw_name)
    if _VALID_IDENTITIES.get(key) is cfg:
        return
    _check_identity(cfg, class_div, student_id, hw_name)
    if len(_VALID_IDENTITIES) >= _VALID_IDENTITIES_MAX:
        _VALID_IDENTITIES.clear()
    _VALID_IDENTITIES[key] = cfg


def _check_identity(
    cfg: identity.IdentityConfig, class_div: str, student_id: str, hw_name: str
) -> None:
    parsed = identity.parse_workspace_dir(f"{class_div}-{student_id}", cfg)
    if isinstance(parsed, identity.NotStudent):
        raise HTTPException(422, f"bad class_div or student_id: {parsed.reason}")
    if parsed.class_div != class_div or parsed.student_id != student_id:
        raise HTTPException(
            422, "bad class_div or student_id: class_div must be '<subject>-<division>'"
        )
    if len(hw_name) > _HW_MAX or re.fullmatch(cfg.assignment_pattern, hw_name) is None:
        raise HTTPException(
            422, f"bad assignment {hw_name!r}: must match {cfg.assignment_pattern!r}"
        )


def split_cmdline(cmdline: str) -> list[str]:
    """argv from the old single-string cmdline, such that ``" ".join(argv) == cmdline``.

    The reads give back ``" ".join(argv)``; when shell-splitting would change the text
    (quotes, doubled spaces, unbalanced quotes) the whole line is kept as one element so the
    old API still returns it verbatim.
    """
    try:
        argv = shlex.split(cmdline)
    except ValueError:
        return [cmdline]
    return argv if " ".join(argv) == cmdline else [cmdline]


def _tool(argv: list[str], fallback: str) -> str:
    name = posixpath.basename(argv[0].split(" ")[0]) if argv and argv[0] else ""
    return (name or posixpath.basename(fallback) or "unknown")[:64]


_EXISTING_SQL = (
    "SELECT f.path FROM classes c "
    "JOIN students s ON s.class_id = c.id AND s.student_id = ? "
    "JOIN assignments a ON a.class_id = c.id AND a.name = ? "
    "JOIN files f ON f.student_pk = s.id AND f.assignment_id = a.id AND f.compat_name = ? "
    "WHERE c.class_div = ? ORDER BY f.id"
)
_EXISTING_SQL_PG = _EXISTING_SQL.replace("?", "%s")


# engine -> thread id -> a detached DBAPI connection kept for _existing_sqlite.
_READERS: weakref.WeakKeyDictionary[Engine, dict[int, Any]] = weakref.WeakKeyDictionary()


def _existing_sqlite(engine: Engine, params: tuple[str, ...]) -> list[str] | None:
    """``_EXISTING_SQL`` on a per-thread autocommit SQLite connection, or None on error.

    The pooled path (checkout, BEGIN, ROLLBACK on return) cost ~200 µs of CPU for a 13 µs
    query, on every old-agent snapshot POST. A single SELECT in autocommit mode is its
    own read transaction, so it sees every committed write like the pooled path did.
    On any driver error the connection is dropped and None makes the caller take the
    pooled path, whose errors are SQLAlchemy's (answered 503 by the app).
    """
    db = engine.url.database or ""
    if db in ("", ":memory:") or "mode=memory" in db:
        return None  # a detached in-memory connection would be a different database
    per_thread = _READERS.setdefault(engine, {})
    tid = threading.get_ident()
    conn: Any = per_thread.get(tid)
    try:
        if conn is None:
            fairy = engine.raw_connection()  # with the engine's connect-time pragmas
            fairy.detach()  # ours for good: the pool neither resets nor reuses it
            conn = per_thread[tid] = fairy.dbapi_connection
        return [row[0] for row in conn.execute(_EXISTING_SQL, params)]
    except sqlite3.Error:
        per_thread.pop(tid, None)
        if conn is not None:
            conn.close()
        return None


def resolve_compat_filename(
    engine: Engine, class_div: str, hw: str, student_id: str, name: str
) -> str | None:
    """The storage path an old-API ``filename`` (path with ``/`` → ``@``) refers to.

    An existing file with that old-API name wins, the literal name first (so a real
    ``test@file#1.cpp`` stays itself). For a new file, ``@`` is read as ``/``, since the old
    agents only wrote ``@`` for ``/`` — unless that makes an invalid path (``a@@b``, ``@x``),
    in which case the literal name is kept. None if no reading is a valid path.
    """
    candidates = identity.compat_filename_candidates(name)
    if not candidates:
        return None
    if "@" not in name:
        # Only the path ``name`` itself has this old-API name (``compat_name`` is the path
        # with ``/`` → ``@``), so the answer is ``name`` whether it exists or not.
        return candidates[0]
    cache = compat_names.cache_for(engine)  # SQLite only: see compat_names
    key = (class_div, hw, student_id, name)
    token = None
    if cache is not None:
        found = cache.get(key)
        if found is not None:
            return found
        token = cache.token()
    # One driver-level statement instead of four ORM lookups: this runs on every old-agent
    # snapshot POST, and building the ORM statements cost ~1.5 ms of CPU per request.
    params = (student_id, hw, name, class_div)  # in placeholder order
    existing = _existing_sqlite(engine, params) if engine.dialect.name == "sqlite" else None
    if existing is None:
        with engine.connect() as conn:
            sql = _EXISTING_SQL if conn.dialect.paramstyle == "qmark" else _EXISTING_SQL_PG
            existing = [row[0] for row in conn.exec_driver_sql(sql, params)]
    path = next((c for c in candidates if c in existing), None)
    if path is None:
        # e.g. "a@b/c" for "a@b@c": still the file the old API listed under that name.
        path = existing[0] if existing else candidates[-1]
    if cache is not None:
        cache.put(key, path, token)
    return path


def source_of(
    engine: Engine, class_div: str, hw: str, student_id: str, cwd: str, target: str | None
) -> SourceFile | None:
    """The student's file an old log's ``target_path`` names, with its latest known size
    and hash, so compat builds/runs get a ``file_size`` like procmon's. None if unknown."""
    if not target:
        return None
    full = target if target.startswith("/") else posixpath.join(cwd or "/", target)
    where = identity.parse_container_path(posixpath.normpath(full), identity_config())
    if isinstance(where, identity.NotStudent) or where.assignment != hw or not where.path:
        return None
    with engine.connect() as conn:
        scope = lookup.student_scope(conn, class_div, hw, student_id)
        if scope is None:
            return None
        row = conn.execute(
            select(SnapshotRow.size, SnapshotRow.sha256)
            .join(FileRow, FileRow.id == SnapshotRow.file_id)
            .where(
                FileRow.student_pk == scope.student_pk,
                FileRow.assignment_id == scope.assignment_id,
                FileRow.path == where.path,
            )
            .order_by(SnapshotRow.ts_us.desc(), SnapshotRow.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return SourceFile(path=where.path, sha256=row.sha256, size=row.size)


def snapshot_time(stamp: str) -> datetime:
    """The KST time of a snapshot path's ``YYYYMMDD_HHMMSS[.ext]``, else a 422."""
    match = _STAMP_RE.fullmatch(stamp)
    if match is None:
        raise HTTPException(422, f"snapshot timestamp must be YYYYMMDD_HHMMSS[.ext], got {stamp!r}")
    # Fixed-width fields, the same values strptime("%Y%m%d_%H%M%S") reads (it has no other
    # split for 8+6 digits), at a tenth of its cost.
    s = match.group(1)
    try:
        return datetime(
            int(s[0:4]),
            int(s[4:6]),
            int(s[6:8]),
            int(s[9:11]),
            int(s[11:13]),
            int(s[13:15]),
            tzinfo=KST,
        )
    except ValueError:
        raise HTTPException(422, f"snapshot timestamp {stamp!r} is not a valid date") from None


async def _submit(request: Request, event: Event) -> None:
    results: list[EventResult] = await request.app.state.writer.submit([event])
    result = results[0]
    if result.status == "rejected":
        raise HTTPException(422, result.error or "rejected")
    if result.status == "retry":
        raise HTTPException(503, result.error or "try again")


def run_event(
    kind: Literal["build", "run"],
    class_div: str,
    hw_name: str,
    student_id: str,
    body: BuildLogIn,
    source: SourceFile | None,
) -> ProcessRun:
    argv = split_cmdline(body.cmdline)
    process_type = body.process_type if isinstance(body, RunLogIn) else None
    tool = _tool(argv, body.binary_path) if kind == "build" else (process_type or _tool(argv, ""))
    return ProcessRun(
        event_id=compat_event_id(f"logs/{kind}", [class_div, hw_name, student_id], body),
        agent=AGENT,
        agent_version=AGENT_VERSION,
        ts=body.timestamp,
        class_div=class_div,
        student_id=student_id,
        assignment=hw_name,
        run_kind=kind,
        tool=tool[:64],
        exe=body.binary_path,
        filename=body.binary_path,
        argv=argv,
        cwd=body.cwd,
        start=body.timestamp,
        end=body.timestamp,
        exit_code=body.exit_code,
        process_type=process_type,
        target_path=body.target_path,
        source_files=[source] if source is not None else [],
        source="compat",
    )


def _invalid(exc: ValidationError) -> HTTPException:
    # A body that passed our checks can still break a wire limit (path > 4096 chars, ...).
    errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return HTTPException(422, f"invalid event: {errors}")


async def _register_log(
    request: Request,
    kind: Literal["build", "run"],
    class_div: str,
    hw_name: str,
    student_id: str,
    body: BuildLogIn | RunLogIn,
) -> None:
    """Shared by the build and run log writes: link the source, build the event, submit."""
    check_identity(class_div, student_id, hw_name)
    source = await run_in_threadpool(
        source_of,
        request.app.state.engine,
        class_div,
        hw_name,
        student_id,
        body.cwd,
        body.target_path,
    )
    try:
        event = run_event(kind, class_div, hw_name, student_id, body, source)
    except ValidationError as exc:
        raise _invalid(exc) from None
    await _submit(request, event)


@router.post("/api/{class_div}/{hw_name}/{student_id}/logs/build", response_model=Message)
async def post_build_log(
    request: Request, class_div: str, hw_name: str, student_id: str, body: BuildLogIn
) -> Message:
    await _register_log(request, "build", class_div, hw_name, student_id, body)
    return Message(message="Build log registered successfully")


@router.post("/api/{class_div}/{hw_name}/{student_id}/logs/run", response_model=Message)
async def post_run_log(
    request: Request, class_div: str, hw_name: str, student_id: str, body: RunLogIn
) -> Message:
    await _register_log(request, "run", class_div, hw_name, student_id, body)
    return Message(message="Run log registered successfully")


async def compat_path(
    engine: Engine, class_div: str, hw_name: str, student_id: str, filename: str
) -> str | None:
    """The stored path an old-API file name stands for (None: not a valid name)."""
    if "@" not in filename or engine.dialect.name == "sqlite":
        # No query for a name without '@'. SQLite: one indexed read (~0.1 ms, WAL readers
        # never wait for the writer) costs less than a threadpool round trip (task, thread
        # wake-up, GIL hand-offs).
        return resolve_compat_filename(engine, class_div, hw_name, student_id, filename)
    return await run_in_threadpool(
        resolve_compat_filename, engine, class_div, hw_name, student_id, filename
    )


def snapshot_event(
    params: list[str], dumped: dict[str, Any], *, ts: datetime, path: str, size: int
) -> FileSnapshot:
    """The old-API snapshot POST as a wire event; ``params`` = the URL's five parts,
    ``dumped`` = the body's JSON-mode dump (its id makes a repeated POST one event)."""
    class_div, hw_name, student_id = params[0], params[1], params[2]
    return FileSnapshot(
        event_id=compat_event_id_of("snapshot", params, dumped),
        agent=AGENT,
        agent_version=AGENT_VERSION,
        ts=ts,
        class_div=class_div,
        student_id=student_id,
        assignment=hw_name,
        path=path,
        sha256=None,
        size=size,
        source="compat",
    )


@router.post("/api/{class_div}/{hw_name}/{student_id}/{filename}/{stamp}", response_model=Message)
async def post_snapshot(
    request: Request,
    class_div: str,
    hw_name: str,
    student_id: str,
    filename: str,
    stamp: str,
    body: SnapshotIn,
) -> Message:
    check_identity(class_div, student_id, hw_name)
    ts = snapshot_time(stamp)
    path = await compat_path(request.app.state.engine, class_div, hw_name, student_id, filename)
    if path is None:
        raise HTTPException(422, f"bad file name {filename!r}")
    try:
        event = snapshot_event(
            [class_div, hw_name, student_id, filename, stamp],
            body.model_dump(mode="json"),
            ts=ts,
            path=path,
            size=body.bytes,
        )
    except ValidationError as exc:
        raise _invalid(exc) from None
    await _submit(request, event)
    return Message(message="Snapshot registered successfully")
