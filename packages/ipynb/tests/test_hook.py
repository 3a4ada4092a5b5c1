"""The hook inside a real IPython InteractiveShell: the lines it writes, and that it never
breaks the shell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

from watcher_ipynb.cellfmt import CELL_LOG_NAME, CellRecord, parse_line
from watcher_ipynb.hook import ENV_CAPTURE_SOURCE, CellLogger, register, unregister
from watcher_ipynb.startup import STARTUP_NAME


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv(ENV_CAPTURE_SOURCE, raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = Config()
    cfg.HistoryManager.hist_file = ":memory:"
    sh = InteractiveShell.instance(config=cfg)
    try:
        yield sh
    finally:
        unregister(sh)
        InteractiveShell.clear_instance()


def lines(path: Path) -> list[CellRecord]:
    raw = path.read_bytes().splitlines(keepends=True)
    assert all(r.endswith(b"\n") for r in raw)
    recs = [parse_line(r) for r in raw]
    assert all(r is not None for r in recs), raw
    return [r for r in recs if r is not None]


def test_ok_and_error_cells_logged(shell: InteractiveShell, tmp_path: Path) -> None:
    logger = register(shell)
    assert logger is not None
    assert shell.run_cell("import time; time.sleep(0.05); x = 41 + 1", store_history=True).success
    r = shell.run_cell("1/0", store_history=True)
    assert not r.success and isinstance(r.error_in_exec, ZeroDivisionError)
    shell.run_cell("   \n", store_history=True)  # empty: IPython runs nothing, so nothing is logged
    shell.run_cell("def f(:\n  pass", store_history=True)  # does not compile
    shell.run_cell("x", store_history=True)  # as ipykernel runs cells

    recs = lines(tmp_path / CELL_LOG_NAME)
    assert [(r.status, r.ename) for r in recs] == [
        ("ok", None),
        ("error", "ZeroDivisionError"),
        ("error", "SyntaxError"),
        ("ok", None),
    ]
    assert [r.execution_count for r in recs] == [1, 2, 3, 4]
    assert recs[0].duration_ms is not None and recs[0].duration_ms >= 50
    assert all(r.duration_ms is not None and r.duration_ms >= 0 for r in recs)
    assert all(r.source is None and r.notebook is None for r in recs)
    assert len({r.id for r in recs}) == 4
    assert recs == sorted(recs, key=lambda r: r.ts)
    assert all(r.ts.tzinfo is UTC for r in recs)
    # No source anywhere in the file unless configured.
    assert b"sleep" not in (tmp_path / CELL_LOG_NAME).read_bytes()
    assert logger.written == 4 and logger.failed == 0


def test_source_only_when_configured(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(shell)
    shell.run_cell("a = '비밀'")
    monkeypatch.setenv(ENV_CAPTURE_SOURCE, "1")
    shell.run_cell("b = '한글 소스'\nraise KeyError(b)")
    recs = lines(tmp_path / CELL_LOG_NAME)
    assert recs[0].source is None
    assert recs[1].source == "b = '한글 소스'\nraise KeyError(b)"
    assert recs[1].ename == "KeyError"
    raw = (tmp_path / CELL_LOG_NAME).read_bytes().decode("utf-8")
    assert "비밀" not in raw and "한글 소스" in raw


def test_notebook_path_from_session(
    shell: InteractiveShell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register(shell)
    nb_dir = tmp_path / "hw1" / "sub dir"
    nb_dir.mkdir(parents=True)
    # ipykernel puts JPY_SESSION_NAME (absolute from jupyter_server) into __session__.
    shell.user_ns["__session__"] = str(nb_dir / "lab 1.ipynb")
    shell.run_cell("1")
    recs = lines(nb_dir / CELL_LOG_NAME)
    assert [r.notebook for r in recs] == ["lab 1.ipynb"]
    assert not (tmp_path / CELL_LOG_NAME).exists()

    # Relative to the server root, with the kernel's cwd in the notebook's directory.
    del shell.user_ns["__session__"]
    (nb_dir / "lab2.ipynb").write_text("{}")
    monkeypatch.chdir(nb_dir)
    monkeypatch.setenv("JPY_SESSION_NAME", "hw1/sub dir/lab2.ipynb")
    shell.run_cell("2")
    # A console session is not a notebook: logged next to the cwd, notebook unknown.
    monkeypatch.setenv("JPY_SESSION_NAME", "console-1-abc")
    shell.run_cell("3")
    recs = lines(nb_dir / CELL_LOG_NAME)
    assert [r.notebook for r in recs] == ["lab 1.ipynb", "lab2.ipynb", None]


def test_survives_unwritable_workspace(
    shell: InteractiveShell,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    logger = register(shell)
    assert logger is not None
    # Tests run as root, so permissions do not stop a write: a directory in the log's
    # place does (EISDIR), and so does a working directory that was removed.
    (tmp_path / CELL_LOG_NAME).mkdir()
    assert shell.run_cell("y = 1").success
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert shell.run_cell("z = y + 1").success
    assert shell.user_ns["z"] == 2
    assert logger.failed == 2 and logger.written == 0
    out = capfd.readouterr()
    assert "Error in callback" not in out.err + out.out
    assert "Traceback" not in out.err + out.out


def test_load_ext_registers_once(shell: InteractiveShell, tmp_path: Path) -> None:
    shell.run_line_magic("load_ext", "watcher_ipynb")
    shell.run_line_magic("load_ext", "watcher_ipynb")  # already loaded: no second hook
    register(shell)  # and the startup file's path agrees
    shell.run_cell("1 + 1")
    recs = lines(tmp_path / CELL_LOG_NAME)
    assert len(recs) == 1 and recs[0].status == "ok"
    shell.run_line_magic("unload_ext", "watcher_ipynb")
    shell.run_cell("2 + 2")
    assert len(lines(tmp_path / CELL_LOG_NAME)) == 1


def test_cell_that_loads_the_hook_is_logged_without_duration(
    shell: InteractiveShell, tmp_path: Path
) -> None:
    shell.run_cell("%load_ext watcher_ipynb")
    recs = lines(tmp_path / CELL_LOG_NAME)
    assert len(recs) == 1 and recs[0].duration_ms is None and recs[0].status == "ok"


def test_callbacks_swallow_garbage(tmp_path: Path) -> None:
    # Whatever IPython version hands us, a callback never raises.
    logger = CellLogger(object(), env={"WATCHER_IPYNB_LOG_DIR": str(tmp_path / "nope")})
    logger.pre_run_cell(None)
    logger.post_run_cell(None)
    logger.post_run_cell(42)
    assert logger.failed == 2


def test_install_startup_cli(tmp_path: Path) -> None:
    prof = tmp_path / "profile_default"
    out = subprocess.run(
        [sys.executable, "-m", "watcher_ipynb", "install-startup", "--profile-dir", str(prof)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    path = prof / "startup" / STARTUP_NAME
    assert out.stdout.strip() == str(path)
    src = path.read_text()
    compile(src, str(path), "exec")
    assert 'load_extension("watcher_ipynb")' in src
    assert os.listdir(prof / "startup") == [STARTUP_NAME]  # no temporary left behind


def test_import_without_ipython() -> None:
    # filemon imports the format module; IPython must not come along.
    code = (
        "import sys; import watcher_ipynb, watcher_ipynb.cellfmt, watcher_ipynb.codeview,"
        " watcher_ipynb.hook; assert 'IPython' not in sys.modules, 'IPython imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    assert json.loads("{}") == {}
