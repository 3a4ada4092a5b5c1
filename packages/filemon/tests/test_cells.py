"""Notebook cell logs (written by watcher_ipynb's hook) → NotebookCell events, exactly once."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from watcher_common.wire import NotebookCell
from watcher_filemon.capture import CaptureSettings
from watcher_filemon.cells import notebook_below_assignment
from watcher_ipynb.cellfmt import CELL_LOG_NAME, CellRecord, format_line
from watcher_ipynb.hook import register, unregister

from .conftest import WS, Harness

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def line(i: int, *, ename: str | None = None, notebook: str | None = "lab1.ipynb") -> bytes:
    return format_line(
        CellRecord(
            id=f"{i:016x}",
            ts=T0 + timedelta(seconds=i),
            status="error" if ename else "ok",
            ename=ename,
            execution_count=i,
            duration_ms=1.5 * i,
            notebook=notebook,
        )
    )


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def cells(h: Harness) -> list[NotebookCell]:
    return [e for e in h.sink.events() if isinstance(e, NotebookCell)]


async def settle(h: Harness, n: int) -> list[NotebookCell]:
    """Wait for ``n`` cells, then a little longer to see that no extra one follows."""
    await h.wait_for(lambda: len(cells(h)) >= n)
    await asyncio.sleep(0.3)
    got = cells(h)
    assert len(got) == n, [c.execution_count for c in got]
    return got


async def test_appended_lines_once_across_restart_truncation_and_replace(
    harness: Harness,
) -> None:
    h = harness
    lab = h.hw / "lab"
    lab.mkdir()
    log = lab / CELL_LOG_NAME
    append(log, line(1))
    append(log, line(2, ename="ZeroDivisionError") + b'{"v": 1, "oops"}\n')
    append(log, line(3) + line(4)[:20])  # a line still being written waits for its newline
    got = await settle(h, 3)
    first = got[0]
    assert (first.class_div, first.student_id, first.assignment) == ("os-1", "202012345", "hw1")
    assert [c.notebook for c in got] == ["lab/lab1.ipynb"] * 3
    assert [(c.status, c.ename) for c in got] == [
        ("ok", None),
        ("error", "ZeroDivisionError"),
        ("ok", None),
    ]
    assert [c.execution_count for c in got] == [1, 2, 3]
    assert got[1].duration_ms == 3.0 and got[1].ts == T0 + timedelta(seconds=2)
    assert all(c.source is None for c in got)
    append(log, line(4)[20:])
    await settle(h, 4)
    assert h.sink.snapshots() == []  # the log itself is never a file version
    assert h.metric("watcher_filemon_notebook_cells_total") == 4
    assert h.metric("watcher_filemon_skipped_total", reason="bad_cell_line") == 1

    # Down while the student keeps running cells: picked up at start, nothing repeated.
    await h.stop()
    append(log, line(5) + line(6))
    await h.start()
    got = await settle(h, 6)
    assert [c.execution_count for c in got] == [1, 2, 3, 4, 5, 6]
    assert len({c.event_id for c in got}) == 6
    assert h.metric("watcher_filemon_notebook_cells_total") == 2  # this process's share

    # Rewritten from the start (same inode, shorter, then longer than before).
    log.write_bytes(line(7))
    await settle(h, 7)
    append(log, b"".join(line(i) for i in range(8, 14)))
    got = await settle(h, 13)
    # Replaced by a new file (a rename over it): read from its start.
    tmp = lab / ".watcher-cells.tmp"
    tmp.write_bytes(line(14))
    os.replace(tmp, log)
    got = await settle(h, 14)
    assert [c.execution_count for c in got] == list(range(1, 15))
    # The folder goes away: so does our place in its log.
    assert h.fm is not None and h.fm.state.cell_log(f"{WS}/hw1/lab/{CELL_LOG_NAME}")
    log.unlink()
    lab.rmdir()
    await h.wait_for(lambda: h.fm is not None and not h.fm.state.cell_logs_under(f"{WS}/hw1"))


async def test_reread_after_lost_offset_reuses_event_ids(harness: Harness) -> None:
    # A crash after the outbox took the events but before the offset was saved reads the
    # lines again: same event ids, so the backend's idempotent ingest stores them once.
    h = harness
    log = h.hw / CELL_LOG_NAME
    append(log, line(1, notebook=None) + line(2, notebook="../x.ipynb"))
    before = await settle(h, 2)
    assert [c.notebook for c in before] == ["", ""]  # unknown / outside: not guessed
    await h.stop()
    db = sqlite3.connect(h.base / "filemon-state.db")
    with db:
        assert db.execute("DELETE FROM cell_logs").rowcount == 1
    db.close()
    await h.start()
    again = await settle(h, 4)
    assert [c.event_id for c in again[2:]] == [c.event_id for c in before]


async def test_outbox_refusal_is_retried(tmp_path: Path) -> None:
    h = Harness(tmp_path, CaptureSettings(retry_after_full_s=0.2))
    await h.start()
    try:
        h.sink.fail = True
        append(h.hw / CELL_LOG_NAME, line(1) + line(2))
        await asyncio.sleep(0.4)
        assert cells(h) == []
        h.sink.fail = False
        await settle(h, 2)
    finally:
        await h.stop()


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    try:
        yield sh
    finally:
        unregister(sh)
        InteractiveShell.clear_instance()


async def test_real_ipython_cells_reach_the_sink(
    harness: Harness, shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    nb_dir = h.hw / "week 3"
    nb_dir.mkdir()
    monkeypatch.chdir(nb_dir)  # Jupyter starts the kernel in the notebook's directory
    shell.user_ns["__session__"] = str(nb_dir / "실습.ipynb")
    register(shell)
    shell.run_cell("x = 6 * 7", store_history=True)
    shell.run_cell("x / 0", store_history=True)
    got = await settle(h, 2)
    assert [(c.status, c.ename, c.execution_count) for c in got] == [
        ("ok", None, 1),
        ("error", "ZeroDivisionError", 2),
    ]
    assert {c.notebook for c in got} == {"week 3/실습.ipynb"}


def test_notebook_below_assignment() -> None:
    assert notebook_below_assignment(".watcher-cells.jsonl", "a.ipynb") == "a.ipynb"
    assert notebook_below_assignment("d/.watcher-cells.jsonl", "e/a.ipynb") == "d/e/a.ipynb"
    assert notebook_below_assignment("d/.watcher-cells.jsonl", "../a.ipynb") == "a.ipynb"
    assert notebook_below_assignment(".watcher-cells.jsonl", "../a.ipynb") == ""
    assert notebook_below_assignment(".watcher-cells.jsonl", "/etc/a.ipynb") == ""
    assert notebook_below_assignment(".watcher-cells.jsonl", None) == ""
