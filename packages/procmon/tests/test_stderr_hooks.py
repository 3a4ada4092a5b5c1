"""Compiler stderr capture through both kernel hooks, against the real kernel.

The tracer prefers the ``syscalls:sys_enter_write`` trace event (a BPF run only on write(2));
it finds the event's id in tracefs, mounting one in a private mount namespace when the node
has none, and falls back to raw ``sys_enter`` (a BPF run on every syscall) without it. Both
must capture the same diagnostics of a failing gcc in a student container, and the private
mount must not leave a tracefs mount behind on the node.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from watcher_procmon.events import StderrEvent
from watcher_procmon.tracer import STDERR_PROGRAM, WRITE_PROGRAM, Tracer, TracerConfig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("gcc") is None or shutil.which("unshare") is None,
    reason="loading BPF needs root; the workload needs gcc and unshare",
)

WORKLOADS = Path(__file__).resolve().parent / "workloads"
PREFIX = "pmhooktest-"  # a prefix no other test or container on the machine uses


def _tracefs_mounts() -> int:
    return sum(" tracefs " in line for line in Path("/proc/self/mountinfo").open())


def _compile_bad(tracer: Tracer, ws: Path) -> list[StderrEvent]:
    shutil.copy(WORKLOADS / "bad.c", ws / "bad.c")
    script = f'hostname {PREFIX}x && cd "{ws}" && exec gcc -c bad.c -o bad.o'
    proc = subprocess.run(
        ["unshare", "--uts", "--fork", "sh", "-c", script], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "error" in proc.stderr  # the ground truth
    events: list[StderrEvent] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        events += [e for e in tracer.read_events(50) if isinstance(e, StderrEvent)]
        if b"".join(e.data for e in events).decode(errors="replace") == proc.stderr:
            break
    return events


@pytest.mark.parametrize(("write_event", "hook"), [(True, WRITE_PROGRAM), (False, STDERR_PROGRAM)])
def test_both_hooks_capture_gccs_stderr(
    tmp_path: Path, bpf_object: Path, write_event: bool, hook: str
) -> None:
    mounts = _tracefs_mounts()
    with Tracer(
        TracerConfig(prefix=PREFIX, bpf_object=bpf_object, write_event=write_event)
    ) as tracer:
        # root has CAP_SYS_ADMIN: the trace event is always reachable here
        assert tracer.stderr_hook == hook
        assert _tracefs_mounts() == mounts, "the private tracefs mount leaked to the node"
        events = _compile_bad(tracer, tmp_path)
        counters = tracer.counters()
    text = b"".join(e.data for e in events).decode()
    assert "bad.c:4:" in text and "error" in text
    # every write of cc1 (the one writing diagnostics) belongs to the gcc driver's build
    assert len({e.build_tgid for e in events}) == 1
    assert counters.stderr_emitted == len(events) and counters.balanced()


def test_capture_off_loads_no_write_hook(bpf_object: Path) -> None:
    with Tracer(TracerConfig(prefix=PREFIX, bpf_object=bpf_object, capture_stderr=False)) as tracer:
        assert tracer.stderr_hook is None
