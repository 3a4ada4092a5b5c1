"""Whole-system fixtures: one backend + filemon + procmon for the session (real processes,
real kernel), and simulated student pods (see students.py).

Each test module uses its own assignment directory (hw1, hw2, ...) so tests that break
services on purpose never disturb another test's assertions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from watcher_procmon.objpath import build_bpf_object

from .procs import System
from .students import Student

needs_root = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="student pods need unshare/nsenter and procmon loads BPF: root only (CI runs as root)",
)


@pytest.fixture(scope="session")
def bpf_object() -> Path:
    return build_bpf_object()


@pytest.fixture(scope="session")
def system(bpf_object: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    sysm = System(tmp_path_factory.mktemp("e2e-system"), bpf_object)
    try:
        sysm.start()
        yield sysm
    finally:
        sysm.stop()


StudentFactory = Callable[..., Student]


@pytest.fixture(scope="session")
def student(system: System) -> Iterator[StudentFactory]:
    """``student(id, subject="os", division="1")`` -> a running pod (one per id, reused)."""
    pods: dict[str, Student] = {}

    def make(student_id: str, subject: str = "os", division: str = "1") -> Student:
        key = f"{subject}-{division}-{student_id}"
        if key not in pods:
            st = Student(subject, division, student_id, system.watch_root)
            st.start()
            pods[key] = st
        return pods[key]

    try:
        yield make
    finally:
        for st in pods.values():
            st.stop()
