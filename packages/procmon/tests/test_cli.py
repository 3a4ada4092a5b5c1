"""watcher-procmon's start-up: clear errors and a non-zero exit when it cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from watcher_procmon import main as cli
from watcher_procmon import tracer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading BPF needs root; CI is root")
CMD = [sys.executable, "-m", "watcher_procmon.main"]


def test_help() -> None:
    out = subprocess.run([*CMD, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--prefix" in out and "--check" in out


def test_missing_btf_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(tracer, "BTF_PATH", tmp_path / "no-btf")
    assert cli.main(["--check"]) == cli.EXIT_CANNOT_RUN
    assert "no BTF" in caplog.text


def test_missing_object_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("WATCHER_PROCMON_BPF_OBJ", str(tmp_path / "nope.o"))
    assert cli.main(["--check"]) == cli.EXIT_CANNOT_RUN
    assert "nope.o does not exist" in caplog.text


@needs_root
def test_check_loads_and_attaches(bpf_object: Path) -> None:
    proc = subprocess.run([*CMD, "--check", "--bpf-object", str(bpf_object)], capture_output=True)
    assert proc.returncode == 0, proc.stderr


@needs_root
def test_without_capabilities_exits_nonzero_with_a_hint(bpf_object: Path) -> None:
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed"
    drop = [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--"]
    proc = subprocess.run(
        [*drop, *CMD, "--check", "--bpf-object", str(bpf_object)], capture_output=True, text=True
    )
    assert proc.returncode == cli.EXIT_CANNOT_RUN
    assert "insufficient privileges" in proc.stderr and "CAP_BPF" in proc.stderr
