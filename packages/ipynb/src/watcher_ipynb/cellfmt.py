"""The cell log: its file name and the format of one line, written by the hook, read by filemon.

One line per executed cell, UTF-8 JSON, newline-terminated::

    {"v": 1, "id": "9f…", "ts": "2026-11-26T08:00:00.123456+00:00", "status": "error",
     "ename": "ZeroDivisionError", "execution_count": 3, "duration_ms": 1.25,
     "notebook": "lab1.ipynb", "cell_id": "a1b2…", "source": "1/0"}

``ts`` is when the cell started (UTC); ``notebook`` is relative to the directory holding
the log (null when unknown); ``source`` is present only when the student pod opted in.
This module is stdlib-only: filemon imports it without IPython.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

# Hidden, and matching filemon's `.watcher-*` noise rule: never stored as a file snapshot.
CELL_LOG_NAME = ".watcher-cells.jsonl"
FORMAT_VERSION = 1

# Bounds shared by writer and reader (the wire schema's limits, or below them).
MAX_ENAME = 256
MAX_NOTEBOOK = 4096
MAX_CELL_ID = 256
MAX_SOURCE_CHARS = 100_000
MAX_LINE_BYTES = 1 << 20  # a longer "line" is garbage, whatever it holds

Status = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class CellRecord:
    id: str
    ts: datetime  # aware, UTC
    status: Status
    ename: str | None = None
    execution_count: int | None = None
    duration_ms: float | None = None
    notebook: str | None = None
    cell_id: str | None = None
    source: str | None = None


def format_line(rec: CellRecord) -> bytes:
    doc: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "id": rec.id,
        "ts": rec.ts.astimezone(UTC).isoformat(),
        "status": rec.status,
        "ename": rec.ename,
        "execution_count": rec.execution_count,
        "duration_ms": rec.duration_ms,
        "notebook": rec.notebook,
        "cell_id": rec.cell_id,
    }
    if rec.source is not None:
        doc["source"] = rec.source
    # ensure_ascii=False keeps Korean source compact; json never emits a raw newline.
    return (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def _opt_str(doc: dict[str, Any], key: str, limit: int) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise ValueError(key)
    return v


def _parse(raw: bytes) -> CellRecord:
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError("too long")
    doc = json.loads(raw.decode("utf-8"))
    if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
        raise ValueError("not a v1 object")
    rid = doc.get("id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 64:
        raise ValueError("id")
    ts_raw = doc.get("ts")
    if not isinstance(ts_raw, str):
        raise ValueError("ts")
    ts = datetime.fromisoformat(ts_raw)
    if ts.tzinfo is None:
        raise ValueError("naive ts")
    status = doc.get("status")
    if status not in ("ok", "error"):
        raise ValueError("status")
    count = doc.get("execution_count")
    if count is not None and (type(count) is not int or count < 0):
        raise ValueError("execution_count")
    dur = doc.get("duration_ms")
    if dur is not None:
        if type(dur) not in (int, float) or not math.isfinite(dur) or dur < 0:
            raise ValueError("duration_ms")
        dur = float(dur)
    return CellRecord(
        id=rid,
        ts=ts.astimezone(UTC),
        status=status,
        ename=_opt_str(doc, "ename", MAX_ENAME),
        execution_count=count,
        duration_ms=dur,
        notebook=_opt_str(doc, "notebook", MAX_NOTEBOOK),
        cell_id=_opt_str(doc, "cell_id", MAX_CELL_ID),
        source=_opt_str(doc, "source", MAX_SOURCE_CHARS),
    )


def parse_line(raw: bytes) -> CellRecord | None:
    """One line of the cell log (with or without its newline), or None if it is not valid.

    The file lives in the student's workspace, so anything may be in it: never raises.
    """
    try:
        return _parse(raw.rstrip(b"\r\n"))
    except (ValueError, TypeError, OverflowError, RecursionError):
        # json.JSONDecodeError and UnicodeDecodeError are ValueErrors.
        return None
