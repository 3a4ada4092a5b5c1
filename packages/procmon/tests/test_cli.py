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


def test_nice_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.ProcmonConfig.from_env().nice == cli.DEFAULT_NICE
    monkeypatch.setenv("WATCHER_PROCMON_NICE", "0")
    assert cli.ProcmonConfig.from_env().nice == 0
    for bad in ("-5", "20", "high"):
        monkeypatch.setenv("WATCHER_PROCMON_NICE", bad)
        with pytest.raises(cli.ConfigError, match="WATCHER_PROCMON_NICE"):
            cli.ProcmonConfig.from_env()


def test_lower_priority_reaches_threads_started_after_it() -> None:
    # a fresh process: niceness cannot be lowered back without privileges
    probe = (
        "import os, threading\n"
        "from watcher_procmon.main import lower_priority\n"
        "first = lower_priority(10)\n"
        "again = lower_priority(5)\n"  # never lowers it
        "seen = []\n"
        "t = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))\n"
        "t.start(); t.join()\n"
        "print(first, again, seen[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["10", "10", "10"]
