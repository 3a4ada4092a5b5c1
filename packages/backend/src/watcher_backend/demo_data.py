"""Wire events for tests and demos: the same JSON the agents POST to /api/v1/events.

``EventFactory`` builds saves, builds (with gcc-style diagnostics), runs and notebook cells
for one class; ``scripts/seed_demo.py`` uses it to fill a running backend with realistic
data, and the backend tests use it to seed small hand-checked scenarios.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
from datetime import datetime, timedelta
from typing import Any

Event = dict[str, Any]


def diag(
    message: str, line: int | None = None, column: int | None = None, *, file: str = "main.c",
    severity: str = "error",
) -> dict[str, Any]:  # fmt: skip
    d: dict[str, Any] = {"file": file, "severity": severity, "message": message}
    if line is not None:
        d["line"] = line
    if column is not None:
        d["column"] = column
    return d


class EventFactory:
    def __init__(self, class_div: str, *, prefix: str = "demo") -> None:
        self.class_div = class_div
        self._ids = itertools.count(1)
        self._prefix = f"{prefix}-{os.urandom(4).hex()}"

    def _base(self, kind: str, ts: datetime, sid: str, hw: str | None) -> Event:
        ev: Event = {
            "kind": kind,
            "event_id": f"{self._prefix}-{next(self._ids):08d}",
            "agent": "demo",
            "agent_version": "0",
            "ts": ts.isoformat(),
            "class_div": self.class_div,
            "student_id": sid,
        }
        if hw is not None:
            ev["assignment"] = hw
        return ev

    def save(self, sid: str, hw: str, path: str, ts: datetime, content: bytes) -> Event:
        return {
            **self._base("file.snapshot", ts, sid, hw),
            "path": path,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "content_b64": base64.b64encode(content).decode(),
        }

    def delete(self, sid: str, hw: str, path: str, ts: datetime) -> Event:
        return {**self._base("file.delete", ts, sid, hw), "path": path}

    def rename(self, sid: str, hw: str, old: str, new: str, ts: datetime) -> Event:
        return {**self._base("file.rename", ts, sid, hw), "path": new, "old_path": old}

    def _process(
        self, sid: str, hw: str, ts: datetime, run_kind: str, argv: list[str], **kw: Any
    ) -> Event:
        duration = kw.pop("duration", timedelta(milliseconds=300))
        return {
            **self._base("process.run", ts, sid, hw),
            "run_kind": run_kind,
            "tool": argv[0].rsplit("/", 1)[-1],
            "exe": argv[0] if argv[0].startswith("/") else f"/usr/bin/{argv[0]}",
            "argv": argv,
            "cwd": f"/home/coder/project/{hw}",
            "start": ts.isoformat(),
            "end": (ts + duration).isoformat(),
            **kw,
        }

    def build(
        self,
        sid: str,
        hw: str,
        ts: datetime,
        diagnostics: list[dict[str, Any]] | None = None,
        *,
        source: str = "main.c",
        exit_code: int | None = None,
    ) -> Event:
        """A gcc run; fails (exit 1) when any diagnostic is an error, unless told."""
        diags = diagnostics or []
        if exit_code is None:
            exit_code = 1 if any(d["severity"] in ("error", "fatal") for d in diags) else 0
        return self._process(
            sid, hw, ts, "build", ["gcc", "-Wall", "-o", "main", source],
            exit_code=exit_code, diagnostics=diags, output_path="main",
        )  # fmt: skip

    def run(
        self, sid: str, hw: str, ts: datetime, *, exit_code: int | None = 0,
        signal: int | None = None, program: str = "./main",
    ) -> Event:  # fmt: skip
        if signal is not None:
            exit_code = None
        return self._process(
            sid, hw, ts, "run", [program], exit_code=exit_code, signal=signal,
            core_dumped=signal in (6, 11),
        )  # fmt: skip

    def cell(
        self, sid: str, hw: str, ts: datetime, index: int, *, ok: bool = True,
        source: str = "print(1)", notebook: str = "lab.ipynb",
    ) -> Event:  # fmt: skip
        return {
            **self._base("notebook.cell", ts, sid, hw),
            "notebook": notebook,
            "cell_index": index,
            "execution_count": index + 1,
            "status": "ok" if ok else "error",
            "ename": None if ok else "NameError",
            "duration_ms": 3.5,
            "source": source,
        }
