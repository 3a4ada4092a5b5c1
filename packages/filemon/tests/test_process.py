"""The real ``watcher-filemon`` process: CLI, logs, /health, /metrics, SIGTERM, and the
whole path filemon → outbox → sender → real ``watcher-backend`` → query API."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import WS

AGENT, READER = "agent-token-for-tests-0123456789", "reader-token-for-tests-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, name
    return path


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(argv, env={**os.environ, **env}, stdout=self.fh, stderr=self.fh)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, needle: str, within_s: float = 20) -> None:
        deadline = time.monotonic() + within_s
        while needle not in self.text():
            assert self.p.poll() is None, self.text()
            assert time.monotonic() < deadline, f"no {needle!r} in:\n{self.text()}"
            time.sleep(0.05)

    def stop(self) -> float:
        t0 = time.monotonic()
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.fh.close()
        return time.monotonic() - t0


def test_help() -> None:
    out = subprocess.run([_bin("watcher-filemon"), "--help"], capture_output=True, timeout=30)
    assert out.returncode == 0
    text = out.stdout.decode()
    for var in ("WATCH_ROOT", "SNAPSHOT_BASE", "METRICS_PORT", "API_SERVER", "FILEMON_SETTLE_MS"):
        assert var in text


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        "PORT": str(port),
        "DB_URL": f"sqlite:///{tmp_path / 'backend.db'}",
        "WATCHER_AGENT_TOKEN": AGENT,
        "WATCHER_READER_TOKEN": READER,
        "WATCHER_ADMIN_TOKEN": "admin-token-for-tests-0123456789",
    }
    proc = Proc([_bin("watcher-backend")], env, tmp_path / "backend.log")
    try:
        proc.wait_log("API endpoints ready", within_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def test_end_to_end_versions_reach_the_backend(tmp_path: Path, backend: str) -> None:
    root = tmp_path / "codes"
    hw = root / WS / "hw1"
    hw.mkdir(parents=True)
    (hw / "pre.c").write_bytes(b"written before filemon started\n")
    metrics_port = _free_port()
    env = {
        "WATCH_ROOT": str(root),
        "SNAPSHOT_BASE": str(tmp_path / "snap"),
        "API_SERVER": backend,
        "METRICS_PORT": str(metrics_port),
        "WATCHER_AGENT_TOKEN": AGENT,
        "NODE_NAME": "node-1",
        "LOG_LEVEL": "INFO",
    }
    fm = Proc([_bin("watcher-filemon")], env, tmp_path / "filemon.log")
    try:
        fm.wait_log("filemon ready")
        text = fm.text()
        assert "filemon starting" in text and f"watching 3 directories under {root}" in text
        health = httpx.get(f"http://127.0.0.1:{metrics_port}/health", timeout=5).json()
        assert health["status"] == "healthy"
        f = hw / "main.c"
        versions = [f"int main(void) {{ return {i}; }}\n".encode() for i in range(3)]
        for v in versions:
            subprocess.run(
                ["vim", "-Es", "-u", "NONE", "-i", "NONE", "-N", "-c", "set backupskip=",
                 "-c", f"call setline(1, ['{v.decode().rstrip()}'])", "-c", "wq", str(f)],
                check=True, timeout=30,
            )  # fmt: skip
            time.sleep(0.5)  # more than the settle: separate saves, not one
        url = f"{backend}/api/v1/classes/os-1/assignments/hw1/students/202012345/files/versions"
        headers = {"Authorization": f"Bearer {READER}"}
        deadline = time.monotonic() + 20
        got: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            r = httpx.get(url, params={"path": "main.c"}, headers=headers, timeout=5)
            got = r.json() if r.status_code == 200 else []
            if len(got) >= 3:
                break
            time.sleep(0.2)
        assert [g["sha256"] for g in got] == [hashlib.sha256(v).hexdigest() for v in versions]
        assert all(g["node"] == "node-1" and not g["reconciled"] for g in got)
        r = httpx.get(url, params={"path": "pre.c"}, headers=headers, timeout=5)
        assert r.status_code == 200 and [g["reconciled"] for g in r.json()] == [True]
        m = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'file_events_total{event_type="create"} 2.0' in m
        assert 'file_events_total{event_type="modify"} 2.0' in m
        assert "202012345" not in m
    finally:
        took = fm.stop()
    assert fm.p.returncode == 0, fm.text()
    assert took < 5.0
    assert "202012345" not in fm.text()  # no student id in INFO logs
