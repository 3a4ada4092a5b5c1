"""quiet_gc freezes the start-up heap and raises the first threshold (in a fresh
interpreter: freezing is process-wide and must not leak into the test process)."""

from __future__ import annotations

import subprocess
import sys


def test_quiet_gc_freezes_the_startup_heap_of_an_agent() -> None:
    code = (
        "import gc, watcher_common.sender, watcher_common.outbox; "
        "from watcher_common.gc_tuning import AGENT_GEN0_THRESHOLD, quiet_gc; "
        "before = gc.get_freeze_count(); quiet_gc(AGENT_GEN0_THRESHOLD); "
        "print(before, gc.get_freeze_count() > 10_000, gc.get_threshold()[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "True", "10000"]
