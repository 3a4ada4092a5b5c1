"""Backend stopped, 100 versions saved, backend started: all 100 arrive, once.

A real ``watcher-filemon`` process and a real ``watcher-backend`` process (same port, same
SQLite DB across the restart); the versions wait in filemon's outbox while the backend is down.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import WS
from .test_process import AGENT, READER, Proc, _bin, _free_port

FILES, ROUNDS = 10, 10  # 10 files x 10 saves = 100 versions
BASE = "/api/v1/classes/os-1/assignments/hw1/students/202012345/files"
HEADERS = {"Authorization": f"Bearer {READER}"}


def _poll(pred: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _metrics(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def _captured(port: int) -> float:
    m = _metrics(port)
    return sum(m.get(f"file_events_total{{event_type={t}}}", 0.0) for t in ("create", "modify"))


def _queued(port: int) -> float:
    return _metrics(port).get("watcher_outbox_events", -1.0)


def test_backend_down_100_versions_all_arrive_once(tmp_path: Path) -> None:
    port, metrics_port = _free_port(), _free_port()
    backend_url = f"http://127.0.0.1:{port}"
    benv = {
        "PORT": str(port),
        "DB_URL": f"sqlite:///{tmp_path / 'backend.db'}",
        "WATCHER_AGENT_TOKEN": AGENT,
        "WATCHER_READER_TOKEN": READER,
        "WATCHER_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
    }
    root = tmp_path / "codes"
    hw = root / WS / "hw1"
    hw.mkdir(parents=True)
    fenv = {
        "WATCH_ROOT": str(root),
        "SNAPSHOT_BASE": str(tmp_path / "snap"),
        "API_SERVER": backend_url,
        "METRICS_PORT": str(metrics_port),
        "WATCHER_AGENT_TOKEN": AGENT,
        "NODE_NAME": "node-1",
        "LOG_LEVEL": "INFO",
        "FILEMON_SETTLE_MS": "50",  # rounds of saves go faster; each is still its own version
    }
    t0 = time.monotonic()
    be1 = Proc([_bin("watcher-backend")], benv, tmp_path / "backend1.log")
    be2: Proc | None = None
    fm = Proc([_bin("watcher-filemon")], fenv, tmp_path / "filemon.log")  # both start at once
    try:
        be1.wait_log("API endpoints ready", within_s=60)
        fm.wait_log("filemon ready")

        # Warm-up: the sender is connected and delivers while the backend is up.
        (hw / "warm.c").write_bytes(b"int warm;\n")

        def warm_arrived() -> bool:
            r = httpx.get(
                f"{backend_url}{BASE}/versions", params={"path": "warm.c"}, headers=HEADERS
            )
            return r.status_code == 200 and len(r.json()) == 1

        _poll(warm_arrived, 20, "the warm-up version")
        _poll(lambda: _queued(metrics_port) == 0, 10, "an empty outbox")

        # Backend down.
        be1.stop()
        assert be1.p.returncode is not None
        with httpx.Client() as c:
            try:
                c.get(f"{backend_url}/health", timeout=1)
                raise AssertionError("backend still answering")
            except httpx.TransportError:
                pass

        # 100 distinct versions: 10 files, each saved 10 times; a round is taken (captured
        # by filemon, per its metrics) before the next one, so every save is its own version.
        expected: dict[str, list[bytes]] = {f"f{j}.c": [] for j in range(FILES)}
        base = _captured(metrics_port)
        for i in range(ROUNDS):
            for j in range(FILES):
                data = f"/* file {j}, save {i} */\nint f{j}(void) {{ return {i}; }}\n".encode()
                (hw / f"f{j}.c").write_bytes(data)
                expected[f"f{j}.c"].append(data)
            want = base + FILES * (i + 1)
            _poll(lambda want=want: _captured(metrics_port) >= want, 10, f"round {i} captured")
        assert _captured(metrics_port) == base + FILES * ROUNDS
        _poll(lambda: _queued(metrics_port) == FILES * ROUNDS, 10, "100 events in the outbox")
        t_saved = time.monotonic()
        assert be1.p.poll() is not None  # still down while all 100 were saved

        # Backend up again: same port, same DB.
        be2 = Proc([_bin("watcher-backend")], benv, tmp_path / "backend2.log")
        be2.wait_log("API endpoints ready", within_s=60)
        t_up = time.monotonic()

        def listing() -> dict[str, int]:
            r = httpx.get(f"{backend_url}{BASE}", headers=HEADERS, timeout=5)
            return {f["path"]: f["versions"] for f in r.json()} if r.status_code == 200 else {}

        # The sender's backoff (full jitter, capped at 60 s) may still be sleeping when the
        # backend is back: allow for the cap, though it normally takes a few seconds.
        _poll(
            lambda: sum(v for p, v in listing().items() if p != "warm.c") >= FILES * ROUNDS,
            70,
            "all 100 versions in the backend",
        )
        _poll(lambda: _queued(metrics_port) == 0, 10, "the outbox drained")
        t_arrived = time.monotonic()

        # Exactly once: each file's versions are its 10 saves, in order, no duplicates.
        assert listing() == {"warm.c": 1, **{name: ROUNDS for name in expected}}
        all_sha: Counter[str] = Counter()
        for name, versions in expected.items():
            r = httpx.get(
                f"{backend_url}{BASE}/versions", params={"path": name}, headers=HEADERS, timeout=5
            )
            got = r.json()
            want_sha = [hashlib.sha256(v).hexdigest() for v in versions]
            assert [g["sha256"] for g in got] == want_sha, name
            assert all(g["has_content"] and not g["reconciled"] for g in got)
            all_sha.update(g["sha256"] for g in got)
            last = httpx.get(
                f"{backend_url}/api/v1/snapshots/{got[-1]['snapshot_id']}/content",
                headers=HEADERS,
                timeout=5,
            )
            assert last.status_code == 200 and last.content == (hw / name).read_bytes()
        assert len(all_sha) == FILES * ROUNDS and set(all_sha.values()) == {1}
        m = _metrics(metrics_port)
        assert m.get("watcher_outbox_dead_events", 0.0) == 0
        assert m["watcher_outbox_send_failures_total{reason=network}"] >= 1  # it was down
    finally:
        fm.stop()
        be1.stop()
        if be2 is not None:
            be2.stop()
    assert fm.p.returncode == 0, fm.text()
    print(
        f"outage test: 100 saved at {t_saved - t0:.1f}s, backend up again at {t_up - t0:.1f}s, "
        f"all arrived {t_arrived - t_up:.1f}s later"
    )
