"""Fixtures: the compiled BPF object (built with the package Makefile when stale)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from watcher_procmon.objpath import build_bpf_object

WORKLOADS = Path(__file__).resolve().parent / "workloads"


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    """``make -C packages/procmon bpf`` (a no-op when up to date), or the env override."""
    return build_bpf_object()


HOSTNAME = "jcode-os-1-202012345-abc12-xyz9"
PROJECT = "/home/coder/project"


def inside_cmd(ws: Path, jobs: Path, result: Path) -> list[str]:
    """The harness inside a "student container": UTS + PID + mount namespaces, hostname
    HOSTNAME, ``ws`` bind-mounted at PROJECT on a tmpfs /home (only in that namespace)."""
    script = (
        "set -e\n"
        f"hostname {HOSTNAME}\n"
        "mount -t tmpfs tmpfs /home\n"
        f"mkdir -p {PROJECT}\n"
        f'mount --bind "$1" {PROJECT}\n'
        f'exec "$2" "$3" "$4" "$5" {PROJECT}\n'
    )
    harness = str(WORKLOADS / "harness.py")
    return [
        "unshare", "--uts", "--pid", "--mount", "--fork", "--mount-proc",
        "sh", "-c", script, "sh", str(ws), sys.executable, harness, str(jobs), str(result),
    ]  # fmt: skip


def outside_cmd(ws: Path, jobs: Path, result: Path) -> list[str]:
    """The same harness on the host (its hostname is not a student container's)."""
    return [sys.executable, str(WORKLOADS / "harness.py"), str(jobs), str(result), str(ws)]


class StudentContainer:
    """Helpers for tests that run workloads in (and outside) a student container."""

    hostname = HOSTNAME
    project = PROJECT
    workloads = WORKLOADS
    inside_cmd = staticmethod(inside_cmd)
    outside_cmd = staticmethod(outside_cmd)


@pytest.fixture(scope="session")
def container() -> StudentContainer:
    return StudentContainer()
