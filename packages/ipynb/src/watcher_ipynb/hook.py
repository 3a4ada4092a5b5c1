"""The IPython hook: one line in a hidden local file per executed cell.

Registered on IPython's ``pre_run_cell`` / ``post_run_cell`` events. It writes only to the
student's own workspace (filemon, on the node, picks the file up): no network, ever.
Whatever goes wrong in here is swallowed and logged at DEBUG: a broken hook must never
show a traceback to a student or stop a kernel. IPython itself is never imported: the
shell object is handed to us, so this module imports anywhere.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from watcher_ipynb.cellfmt import (
    CELL_LOG_NAME,
    MAX_CELL_ID,
    MAX_ENAME,
    MAX_SOURCE_CHARS,
    CellRecord,
    format_line,
)

log = logging.getLogger("watcher_ipynb")

ENV_CAPTURE_SOURCE = "WATCHER_IPYNB_CAPTURE_SOURCE"  # "1": also log the cell source
ENV_LOG_DIR = "WATCHER_IPYNB_LOG_DIR"  # write the log here instead of next to the notebook

_ATTR = "_watcher_ipynb_logger"
_MAX_DEPTH = 64  # started cells (nested run_cell calls) we keep start times for
_O_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def notebook_path(user_ns: Mapping[str, Any], env: Mapping[str, str], cwd: str) -> str | None:
    """The running notebook's absolute path, best effort, or None.

    VS Code / code-server sets ``__vsc_ipynb_file__`` in the namespace; ipykernel sets
    ``__session__`` from ``JPY_SESSION_NAME``, which jupyter_server fills with the
    notebook's path (absolute, or relative to the server root: the kernel's cwd is the
    notebook's directory, so its base name is tried there).
    """
    for cand in (
        user_ns.get("__vsc_ipynb_file__"),
        user_ns.get("__session__"),
        env.get("JPY_SESSION_NAME"),
    ):
        if not isinstance(cand, str) or not cand.strip().endswith(".ipynb"):
            continue  # consoles and plain IPython have no notebook
        p = cand.strip()
        if os.path.isabs(p):
            if os.path.isdir(os.path.dirname(p)):
                return os.path.normpath(p)
            continue
        for q in (os.path.join(cwd, p), os.path.join(cwd, os.path.basename(p))):
            if os.path.isfile(q):
                return os.path.normpath(q)
    return None


def append_line(path: str, data: bytes) -> None:
    # One O_APPEND write per line: two kernels sharing a directory never interleave lines.
    fd = os.open(path, _O_APPEND, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)


class CellLogger:
    """The two callbacks, plus the little state that pairs them up."""

    def __init__(
        self,
        shell: Any,
        *,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.shell = shell
        self.env: Mapping[str, str] = os.environ if env is None else env
        self.clock = clock
        # Keyed by the ExecutionInfo object IPython hands to both events: pairs nested
        # run_cell calls correctly, and skips empty cells (post without pre).
        self._starts: dict[int, tuple[float, datetime]] = {}
        self.written = 0
        self.failed = 0

    def pre_run_cell(self, info: Any = None) -> None:
        try:
            if len(self._starts) >= _MAX_DEPTH:
                self._starts.clear()  # posts were lost somehow: do not grow forever
            self._starts[id(info)] = (self.clock(), datetime.now(UTC))
        except Exception:
            log.debug("watcher_ipynb: pre_run_cell failed", exc_info=True)

    def post_run_cell(self, result: Any = None) -> None:
        try:
            if self._record(result):
                self.written += 1
        except Exception:
            self.failed += 1
            log.debug("watcher_ipynb: cell not logged", exc_info=True)

    # ---- one line ---------------------------------------------------------------------

    def _record(self, result: Any) -> bool:
        now = self.clock()
        info = getattr(result, "info", None)
        raw = getattr(info, "raw_cell", None)
        start = self._starts.pop(id(info), None)
        if isinstance(raw, str) and not raw.strip():
            return False  # IPython skips empty cells without running anything
        if start is not None:
            duration: float | None = round(max(0.0, now - start[0]) * 1000.0, 3)
            ts = start[1]
        else:  # the cell that loaded us: it ran, but we did not see it start
            ts, duration = datetime.now(UTC), None
        err = getattr(result, "error_before_exec", None) or getattr(result, "error_in_exec", None)
        success = getattr(result, "success", err is None)
        ename = type(err).__name__[:MAX_ENAME] if err is not None else None
        count = getattr(result, "execution_count", None)
        cell_id = getattr(info, "cell_id", None)
        source = None
        if _truthy(self.env.get(ENV_CAPTURE_SOURCE)):
            source = raw[:MAX_SOURCE_CHARS] if isinstance(raw, str) else None

        cwd = os.getcwd()
        ns = getattr(self.shell, "user_ns", None)
        nb = notebook_path(ns if isinstance(ns, Mapping) else {}, self.env, cwd)
        log_dir = self.env.get(ENV_LOG_DIR) or (os.path.dirname(nb) if nb else cwd)
        rel_nb = os.path.relpath(nb, log_dir) if nb else None
        rec = CellRecord(
            id=secrets.token_hex(8),
            ts=ts,
            status="ok" if success and err is None else "error",
            ename=ename,
            execution_count=count if type(count) is int and count >= 0 else None,
            duration_ms=duration,
            notebook=rel_nb if rel_nb and not rel_nb.startswith("..") else None,
            cell_id=cell_id if isinstance(cell_id, str) and len(cell_id) <= MAX_CELL_ID else None,
            source=source,
        )
        append_line(os.path.join(log_dir, CELL_LOG_NAME), format_line(rec))
        return True


def register(shell: Any) -> CellLogger | None:
    """Attach the logger to an IPython shell once; None if it could not be attached."""
    try:
        existing = getattr(shell, _ATTR, None)
        if isinstance(existing, CellLogger):
            return existing
        logger = CellLogger(shell)
        shell.events.register("pre_run_cell", logger.pre_run_cell)
        shell.events.register("post_run_cell", logger.post_run_cell)
        setattr(shell, _ATTR, logger)
        return logger
    except Exception:
        log.debug("watcher_ipynb: could not register the cell hook", exc_info=True)
        return None


def unregister(shell: Any) -> None:
    try:
        logger = getattr(shell, _ATTR, None)
        if not isinstance(logger, CellLogger):
            return
        shell.events.unregister("pre_run_cell", logger.pre_run_cell)
        shell.events.unregister("post_run_cell", logger.post_run_cell)
        delattr(shell, _ATTR)
    except Exception:
        log.debug("watcher_ipynb: could not unregister the cell hook", exc_info=True)
