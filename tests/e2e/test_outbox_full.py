"""The outbox on a tiny tmpfs filling up while the backend is unreachable: filemon reports
``degraded`` (reason ``outbox_full``) and keeps running; once the backend is reachable
again everything written is stored exactly once and health returns to ``healthy``.

A filemon of its own (not the session's): its SNAPSHOT_BASE (outbox.db and
filemon-state.db) is a 4 MB tmpfs, its WATCH_ROOT a private tree, its API_SERVER a closed
loopback port where a backend of its own (own SQLite) is started later.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import needs_root
from .procs import ADMIN, AGENT, READER, Service, bin_path, free_port, wait_until
from .students import sha

pytestmark = needs_root

TMPFS_SIZE = "4m"  # also fails with 12m (the 8 MB reserve then exists)
FILE_BYTES = 192 * 1024  # text, under FILEMON_MAX_FILE_BYTES: kept as an outbox blob
CLASS_DIV, STUDENT, HW = "os-1", "202700001", "hw7"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    base = tmp_path / "filemon-state"
    base.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(base)], check=True
    )
    try:
        yield base
    finally:
        subprocess.run(["umount", "-l", str(base)], check=True)


def _health(port: int) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
    return doc


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _text(i: int) -> bytes:
    """Incompressible but plain text (filemon skips binaries): hex lines."""
    body = secrets.token_hex(FILE_BYTES // 2 - 64)
    lines = [body[k : k + 99] for k in range(0, len(body), 99)]
    return (f"/* file {i} */\n" + "\n".join(lines) + "\n").encode()


def test_outbox_fills_up_degrades_and_recovers(tmp_path: Path, tiny_disk: Path) -> None:
    codes = tmp_path / "codes"
    hw_dir = codes / f"{CLASS_DIV}-{STUDENT}" / HW
    hw_dir.mkdir(parents=True)
    api_port, fm_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}"
    filemon = Service(
        "filemon-tiny",
        [bin_path("watcher-filemon")],
        {
            "WATCHER_AGENT_TOKEN": AGENT,
            "LOG_LEVEL": "INFO",
            "WATCH_ROOT": str(codes),
            "SNAPSHOT_BASE": str(tiny_disk),
            "API_SERVER": api_url,  # nothing listens there yet
            "METRICS_PORT": str(fm_port),
            "NODE_NAME": "e2e-tiny",
            "FILEMON_RECONCILE_INTERVAL_S": "0",
        },
        tmp_path / "filemon.log",
        "filemon ready",
    )
    backend = Service(
        "backend-tiny",
        [bin_path("watcher-backend")],
        {
            "PORT": str(api_port),
            "DB_URL": f"sqlite:///{tmp_path / 'watcher.db'}",
            "WATCHER_AGENT_TOKEN": AGENT,
            "WATCHER_READER_TOKEN": READER,
            "WATCHER_ADMIN_TOKEN": ADMIN,
        },
        tmp_path / "backend.log",
        "API endpoints ready",
    )
    written: dict[str, bytes] = {}
    try:
        filemon.start()
        assert _health(fm_port)["status"] == "healthy"
        # write until the outbox refuses (at most ~3x the disk), one file at a time
        i = 0
        while "outbox_full" not in _health(fm_port)["reasons"]:
            assert i < 64, f"outbox never filled up: {_health(fm_port)}"
            i += 1
            captured = _metric(fm_port, "watcher_filemon_capture_latency_seconds_count")
            refused = _metric(fm_port, "watcher_filemon_outbox_full_total")
            name = f"f{i:02d}.c"
            written[name] = _text(i)
            (hw_dir / name).write_bytes(written[name])
            wait_until(
                lambda c=captured, r=refused: (
                    _metric(fm_port, "watcher_filemon_capture_latency_seconds_count") > c
                    or _metric(fm_port, "watcher_filemon_outbox_full_total") > r
                ),
                20,
                f"filemon to capture or refuse {name}",
            )
        doc = _health(fm_port)
        assert doc["status"] == "degraded" and doc["reasons"] == ["outbox_full"], doc
        print(f"outbox full after {i} files ({doc['details']}); {doc['outbox_events']} queued")
        # still working while full: more saves, and a file changed again
        captured = _metric(fm_port, "watcher_filemon_capture_latency_seconds_count")
        refused = _metric(fm_port, "watcher_filemon_outbox_full_total")
        written["late.c"] = b"int late;\n"
        (hw_dir / "late.c").write_bytes(written["late.c"])
        first = written["f01.c"]
        written["f01.c"] = b"int f01_changed;\n"
        (hw_dir / "f01.c").write_bytes(written["f01.c"])
        # While full, a small save is either held (refused, retried later) or fits in the
        # space a WAL checkpoint handed back; either way filemon keeps running, loses nothing.
        cap = "watcher_filemon_capture_latency_seconds_count"
        full = "watcher_filemon_outbox_full_total"
        wait_until(
            lambda c=captured, r=refused: (
                _metric(fm_port, cap) >= c + 2 or _metric(fm_port, full) > r
            ),
            30,
            "filemon to capture or hold the saves made while full",
        )
        assert filemon.running

        # the backend comes up: acks free the outbox, the held saves go in
        backend.start()
        api = httpx.Client(
            base_url=api_url, headers={"Authorization": f"Bearer {READER}"}, timeout=15
        )
        url = f"/api/v1/classes/{CLASS_DIV}/assignments/{HW}/students/{STUDENT}/files"

        def stored() -> dict[str, list[str]] | None:
            r = api.get(url)
            if r.status_code != 200:
                return None
            out = {}
            for f in r.json():
                v = api.get(f"{url}/versions", params={"path": f["path"]})
                assert v.status_code == 200, v.text
                out[f["path"]] = [x["sha256"] for x in v.json()]
            last = {p: shas[-1] for p, shas in out.items()}
            return out if last == {p: sha(d) for p, d in written.items()} else None

        got = wait_until(stored, 120, "every file's last version stored")
        wait_until(lambda: _metric(fm_port, "watcher_outbox_events") == 0, 60, "outbox drained")
        wait_until(lambda: _health(fm_port)["status"] == "healthy", 30, "health back to healthy")
        got = stored()
        assert got is not None
        # every version once: f01 (captured before the disk filled) then its change, and
        # every other file once, the ones the full outbox refused included
        want = {p: [sha(d)] for p, d in written.items()}
        want["f01.c"] = [sha(first), sha(written["f01.c"])]
        assert got == want
        assert filemon.running
        api.close()
    finally:
        filemon.stop()
        backend.stop()
