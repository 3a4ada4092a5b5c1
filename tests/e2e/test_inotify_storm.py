"""An inotify overflow storm through the whole system: a student pod bursts >10k writes
across many files; filemon's inotify queue overflows, it rescans, and the last stored
version of every file equals what is on disk.

The queue is made small with ``fs.inotify.max_queued_events``, which the kernel reads when
an inotify instance is created: so this test starts a filemon of its own (own WATCH_ROOT
and state, the session backend) while the sysctl is lowered, and restores it at once. The
session filemon keeps its normal queue.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from .api import versions
from .conftest import StudentFactory, needs_root
from .procs import AGENT, Service, System, bin_path, free_port, wait_until
from .students import Student, sha

pytestmark = needs_root

SYSCTL = Path("/proc/sys/fs/inotify/max_queued_events")
SMALL_QUEUE = 256
FILES, ROUNDS = 50, 210  # 10,500 writes (each an open, a modify and a close)
HW = "hw8"


def _counter(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_overflow_storm(system: System, student: StudentFactory, tmp_path: Path) -> None:
    root = tmp_path / "codes"
    root.mkdir()
    port = free_port()
    filemon = Service(
        "filemon-storm",
        [bin_path("watcher-filemon")],
        {
            "WATCHER_AGENT_TOKEN": AGENT,
            "LOG_LEVEL": "INFO",
            "WATCH_ROOT": str(root),
            "SNAPSHOT_BASE": str(tmp_path / "state"),
            "API_SERVER": system.api_url,
            "METRICS_PORT": str(port),
            "NODE_NAME": "e2e-storm",
            "FILEMON_RECONCILE_INTERVAL_S": "0",
        },
        tmp_path / "filemon.log",
        "filemon ready",
    )
    st = Student("os", "1", "202800001", root)
    saved = SYSCTL.read_text()
    try:
        st.start()
        st.sh(f"mkdir -p {HW}", cwd="")
        SYSCTL.write_text(f"{SMALL_QUEUE}\n")
        try:
            filemon.start()
        finally:
            SYSCTL.write_text(saved)
        overflow = 'watcher_filemon_rescans_total{reason="overflow"}'
        before = _counter(port, overflow)
        st.sh(
            f"r=0; while [ $r -lt {ROUNDS} ]; do f=0; while [ $f -lt {FILES} ]; do "
            'echo "int v_${f}_${r};" > "f$f.c"; f=$((f+1)); done; r=$((r+1)); done',
            cwd=HW,
        )
        disk = {p.name: sha(p.read_bytes()) for p in (st.ws / HW).iterdir()}
        assert len(disk) == FILES

        def settled() -> dict[str, str] | None:
            last = {}
            for name in disk:
                got = versions(system.api, st, HW, name)
                if not got:
                    return None
                last[name] = got[-1]["sha256"]
            return last if last == disk else None

        wait_until(settled, 90, "the last stored version of every file to equal the disk")
        assert filemon.running
        overflows = _counter(port, "watcher_filemon_overflows_total")
        rescans = _counter(port, overflow) - before
        print(f"storm: {FILES * ROUNDS} writes, {overflows:.0f} overflows, {rescans:.0f} rescans")
        assert overflows >= 1 and rescans >= 1
    finally:
        SYSCTL.write_text(saved)
        filemon.stop()
        st.stop()
