"""Fixtures: the compiled BPF object (built with the package Makefile when stale)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
WORKLOADS = Path(__file__).resolve().parent / "workloads"


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    """``make -C packages/procmon bpf`` (a no-op when up to date), or the env override."""
    env = os.environ.get("WATCHER_PROCMON_BPF_OBJ")
    if env:
        return Path(env)
    make = shutil.which("make")
    assert make, "make is needed to build procmon.bpf.o (scripts/install-deps.sh)"
    subprocess.run([make, "-s", "-C", str(PKG), "bpf"], check=True)
    return PKG / "build" / "procmon.bpf.o"
