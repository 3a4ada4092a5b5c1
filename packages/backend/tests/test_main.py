"""The real ``watcher-backend`` process: the seed's three log lines, in order, and /health."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from watcher_backend.config import Settings
from watcher_backend.main import main, parse_args

SEED_LINES = ["Server starting on port {port}", "Database initialized", "API endpoints ready"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_real_process_logs_and_health(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("WATCHER_") and k not in ("PORT", "DB_URL")
    }
    env["WATCHER_AGENT_TOKEN"] = "proc-agent-token"
    env["PORT"] = "1"  # the option must win over the environment
    cmd = [
        sys.executable, "-m", "watcher_backend.main",
        "--port", str(port), "--host", "127.0.0.1",
        "--db-url", f"sqlite:///{tmp_path}/data/watcher.db",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("API endpoints ready" in s for s in seen):
            assert proc.poll() is None, "\n".join(seen)
            assert time.monotonic() < deadline, "no 'API endpoints ready':\n" + "\n".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=1))
        expected = [s.format(port=port) for s in SEED_LINES]
        positions = []
        for want in expected:
            hits = [i for i, line in enumerate(seen) if line.endswith(want)]
            assert len(hits) == 1, (want, seen)
            assert " INFO " in seen[hits[0]]
            positions.append(hits[0])
        assert positions == sorted(positions), seen
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert r.status_code == 200 and r.json()["status"] == "healthy"
        assert (tmp_path / "data" / "watcher.db").exists()
        assert not any("proc-agent-token" in line for line in seen)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # uvicorn shuts down gracefully, then re-raises the signal it caught
    assert proc.returncode in (0, -signal.SIGTERM)


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--port", "--db-url", "--host"):
        assert opt in out


def test_bad_configuration_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    assert main([]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_settings_from_env(tmp_path: Path) -> None:
    token_file = tmp_path / "admin.tok"
    token_file.write_text("file-admin-1\nfile-admin-2\n")
    s = Settings.from_env(
        {
            "PORT": "8080",
            "DB_URL": "sqlite:///x.db",
            "WATCHER_AGENT_TOKEN": " a1 , a2,,",
            "WATCHER_ADMIN_TOKEN_FILE": str(token_file),
            "WATCHER_MAX_BATCH_EVENTS": "10",
            "LOG_LEVEL": "DEBUG",
        },
        port=9999,
    )
    assert s.port == 9999 and s.db_url == "sqlite:///x.db" and s.log_level == "DEBUG"
    assert s.agent_tokens == ("a1", "a2")
    assert s.reader_tokens == ()
    assert s.admin_tokens == ("file-admin-1", "file-admin-2")
    assert s.max_batch_events == 10
    d = Settings.from_env({})
    assert d.port == 3000 and d.db_url == "sqlite:///./data/watcher.db" and not d.has_tokens
    with pytest.raises(ValueError, match="WATCHER_READER_TOKEN_FILE"):
        Settings.from_env({"WATCHER_READER_TOKEN_FILE": str(tmp_path / "missing")})


def test_quiet_gc_freezes_the_startup_heap() -> None:
    # in a fresh interpreter: freezing is process-wide and must not leak into this one
    code = (
        "import gc; from watcher_backend.main import GC_GEN0_THRESHOLD, quiet_gc; quiet_gc(); "
        "print(gc.get_freeze_count() > 10_000, gc.get_threshold()[0] == GC_GEN0_THRESHOLD)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
