"""End to end in a real Jupyter kernel: the startup file the pod image installs loads the
hook, and cells executed through the Jupyter protocol land in the notebook's cell log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from jupyter_client.manager import KernelManager

from watcher_ipynb.cellfmt import CELL_LOG_NAME, parse_line


def test_real_kernel_with_startup_file(tmp_path: Path) -> None:
    ipydir = tmp_path / "ipython"
    subprocess.run(
        [sys.executable, "-m", "watcher_ipynb", "install-startup", "--profile-dir",
         str(ipydir / "profile_default")],
        check=True,
        timeout=30,
    )  # fmt: skip
    nb_dir = tmp_path / "os-1-202012345" / "hw2"
    nb_dir.mkdir(parents=True)
    nb = nb_dir / "lab.ipynb"
    nb.write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JPY_", "WATCHER_IPYNB"))}
    # What jupyter_server gives a kernel it starts for a notebook session.
    env.update(IPYTHONDIR=str(ipydir), JPY_SESSION_NAME=str(nb))
    km = KernelManager(kernel_name="python3")
    km.start_kernel(cwd=str(nb_dir), env=env)
    try:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=60)
            ok = kc.execute_interactive("total = sum(range(10))", timeout=30)
            err = kc.execute_interactive("total / 0", timeout=30)
            silent = kc.execute_interactive("42", silent=True, timeout=30)
        finally:
            kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert ok["content"]["status"] == "ok" and err["content"]["status"] == "error"
    assert silent["content"]["status"] == "ok"

    raw = (nb_dir / CELL_LOG_NAME).read_bytes().splitlines()
    recs = [parse_line(r) for r in raw]
    # The silent execution (what frontends use for completion/inspection) is not a cell.
    assert [(r.status, r.ename, r.execution_count, r.notebook) for r in recs if r] == [
        ("ok", None, 1, "lab.ipynb"),
        ("error", "ZeroDivisionError", 2, "lab.ipynb"),
    ]
    assert all(r is not None and r.duration_ms is not None for r in recs)
