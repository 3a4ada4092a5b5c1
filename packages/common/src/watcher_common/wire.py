"""The wire schema: every event an agent sends to the backend, defined once.

Agents and the backend import these models; nothing else describes the wire format.
Every event carries an agent-chosen ``event_id`` so that re-sending is harmless: the
backend stores an id once and answers ``duplicate`` for a repeat.

Time is always timezone-aware; agents send UTC (``...Z``).
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

EventId = Annotated[
    str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
# class_div is "<subject>-<division>"; the backend re-checks it with the identity parser.
ClassDiv = Annotated[str, StringConstraints(min_length=3, max_length=128)]
StudentId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
AssignmentName = Annotated[str, StringConstraints(min_length=1, max_length=128)]
# A path below the assignment directory, "/"-separated, never absolute, no "..".
RelPath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]

# Bytes of content an agent may inline in an event (base64) instead of uploading a blob.
MAX_INLINE_CONTENT = 64 * 1024
MAX_ARGV_ITEMS = 4096
MAX_DIAGNOSTICS = 500


def new_event_id() -> str:
    """A unique, roughly time-ordered id: 16 hex digits of ns clock + 16 random hex digits."""
    return f"{time.time_ns():016x}{os.urandom(8).hex()}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def rel_path_ok(value: str) -> bool:
    """A path below the assignment: relative, no NUL, no empty, '.' or '..' component.

    The one rule for every path of a file event (the wire model's validator, the
    backend's msgspec first pass, procmon's directly encoded snapshots); the common case
    (no component starts with '.') needs no split.
    """
    if not value or value[0] == "/" or value[-1] == "/" or "//" in value or "\x00" in value:
        return False  # empty, absolute, NUL, or an empty component
    if value[0] != "." and "/." not in value:
        return True
    return not any(p in (".", "..") for p in value.split("/"))


def _check_rel_path(value: str) -> str:
    if value.startswith("/") or "\x00" in value:
        raise ValueError("path must be relative to the assignment directory and contain no NUL")
    if not rel_path_ok(value):
        raise ValueError("path must not contain empty, '.' or '..' components")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=1_000_000)


class EventBase(_Model):
    event_id: EventId
    node: Annotated[str, StringConstraints(max_length=253)] = ""
    agent: Annotated[str, StringConstraints(max_length=64)]  # e.g. "filemon"
    agent_version: Annotated[str, StringConstraints(max_length=64)]
    ts: AwareDatetime  # when it happened, UTC


class StudentScoped(EventBase):
    class_div: ClassDiv
    student_id: StudentId


class FileScoped(StudentScoped):
    assignment: AssignmentName
    path: RelPath

    @field_validator("path")
    @classmethod
    def _path_ok(cls, v: str) -> str:
        return _check_rel_path(v)


class FileSnapshot(FileScoped):
    """One saved version of a file. Content is inline (base64) or uploaded as a blob first."""

    kind: Literal["file.snapshot"] = "file.snapshot"
    sha256: Sha256 | None = None  # None only for metadata-only (too_large / compat size-only)
    size: Annotated[int, Field(ge=0)]
    content_b64: str | None = Field(default=None, max_length=(MAX_INLINE_CONTENT * 4) // 3 + 8)
    mtime: AwareDatetime | None = None
    too_large: bool = False
    reconciled: bool = False  # found by a scan, not by a live event
    # who captured it: the file agent, the exec agent (capture-on-exec), or the compat API
    source: Literal["filemon", "procmon", "compat"] = "filemon"


class FileDelete(FileScoped):
    kind: Literal["file.delete"] = "file.delete"
    reconciled: bool = False


class FileRename(FileScoped):
    """``old_path`` was renamed to ``path`` within the same assignment."""

    kind: Literal["file.rename"] = "file.rename"
    old_path: RelPath
    sha256: Sha256 | None = None
    size: Annotated[int, Field(ge=0)] | None = None

    @field_validator("old_path")
    @classmethod
    def _old_path_ok(cls, v: str) -> str:
        return _check_rel_path(v)


class SourceFile(_Model):
    """A source file a build or run used, with the hash of the bytes it read."""

    path: RelPath  # below the assignment when attributable, else as seen in the container
    sha256: Sha256 | None = None
    size: Annotated[int, Field(ge=0)] | None = None


class Diagnostic(_Model):
    file: Annotated[str, StringConstraints(max_length=4096)] = ""
    line: int | None = None
    column: int | None = None
    severity: Literal["error", "warning", "note", "fatal"] = "error"
    message: Annotated[str, StringConstraints(max_length=8192)]


RunKind = Literal["build", "run", "interpreter", "buildtool", "other"]


class ProcessRun(StudentScoped):
    """One exec'd process from start to exit (a second exec in the same pid is a new run)."""

    kind: Literal["process.run"] = "process.run"
    assignment: AssignmentName | None = None
    run_kind: RunKind
    tool: Annotated[str, StringConstraints(max_length=64)]  # "gcc", "python3", "binary", ...
    exe: Annotated[str, StringConstraints(max_length=4096)] = ""
    filename: Annotated[str, StringConstraints(max_length=4096)] = ""  # what was exec'd
    argv: Annotated[list[str], Field(max_length=MAX_ARGV_ITEMS)]
    argv_truncated: bool = False
    argv_len: Annotated[int, Field(ge=0)] | None = None  # original length in bytes if truncated
    cwd: Annotated[str, StringConstraints(max_length=4096)] = ""  # as seen in the container
    hostname: Annotated[str, StringConstraints(max_length=253)] = ""
    pid: int | None = None
    ppid: int | None = None
    uid: int | None = None
    cgroup_id: int | None = None
    pidns: int | None = None
    mntns: int | None = None
    start: AwareDatetime
    end: AwareDatetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    source_files: Annotated[list[SourceFile], Field(max_length=1024)] = []
    output_path: Annotated[str, StringConstraints(max_length=4096)] | None = None
    diagnostics: Annotated[list[Diagnostic], Field(max_length=MAX_DIAGNOSTICS)] = []
    stderr_excerpt: Annotated[str, StringConstraints(max_length=65536)] | None = None
    identity_mismatch: bool = False  # hostname and path disagree about who this is
    # compat-only fields kept verbatim from the old API
    process_type: Annotated[str, StringConstraints(max_length=32)] | None = None
    target_path: Annotated[str, StringConstraints(max_length=4096)] | None = None
    source: Literal["procmon", "compat"] = "procmon"


class NotebookCell(StudentScoped):
    """One executed Jupyter cell, from the IPython hook's local log."""

    kind: Literal["notebook.cell"] = "notebook.cell"
    assignment: AssignmentName | None = None
    notebook: Annotated[str, StringConstraints(max_length=4096)] = ""  # path below assignment
    cell_index: int | None = None
    execution_count: int | None = None
    status: Literal["ok", "error"]
    ename: Annotated[str, StringConstraints(max_length=256)] | None = None
    duration_ms: Annotated[float, Field(ge=0)] | None = None
    source: Annotated[str, StringConstraints(max_length=262144)] | None = None


Event = Annotated[
    FileSnapshot | FileDelete | FileRename | ProcessRun | NotebookCell,
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_KINDS: tuple[str, ...] = (
    "file.snapshot",
    "file.delete",
    "file.rename",
    "process.run",
    "notebook.cell",
)


def parse_event(data: Any) -> Event:
    """Validate one event (dict or JSON-compatible); raises pydantic.ValidationError."""
    return EVENT_ADAPTER.validate_python(data)


def dump_event(event: Event) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True)


# ---- ingest request / response -------------------------------------------------------

MAX_BATCH_EVENTS = 1000
MAX_BATCH_BYTES = 8 * 1024 * 1024

ResultStatus = Literal["stored", "duplicate", "rejected", "retry"]


class EventResult(_Model):
    event_id: str
    status: ResultStatus
    # why it was rejected (permanent) or must be retried (e.g. its blob is not uploaded yet)
    error: str | None = None


class IngestResponse(_Model):
    results: list[EventResult]
