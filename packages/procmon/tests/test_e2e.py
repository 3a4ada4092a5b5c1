"""End to end: the real ``watcher-procmon`` process -> its outbox -> a real
``watcher-backend`` (temp SQLite) -> the build, its diagnostics and the compiled sources'
hashes read back through the backend's query and compat APIs; /metrics, /health, startup
logs and a SIGTERM drain of the agent itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="loading BPF needs root (CAP_BPF + CAP_PERFMON); CI runs as root"
)

AGENT_TOKEN = "e2e-agent-token-0123456789"
READER_TOKEN = "e2e-reader-token-0123456789"
STUDENT_ID = "202012345"
JOBS = [
    {"name": "gcc_err", "argv": ["gcc", "-c", "bad.c"], "cwd": "hw1"},
    {"name": "gcc_ok", "argv": ["gcc", "-o", "hello", "hello.c"], "cwd": "hw1"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose stderr is collected line by line."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.p.stderr is not None
        for line in self.p.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log:
            assert self.p.poll() is None, f"exited {self.p.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._t.join(5)


def _wait(fn: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@dataclass
class E2E:
    ws: Path
    api: httpx.Client
    agent: Proc
    metrics_url: str
    harness: dict[str, Any]


@pytest.fixture(scope="module")
def e2e(
    bpf_object: Path, tmp_path_factory: pytest.TempPathFactory, container: Any
) -> Iterator[E2E]:
    tmp = tmp_path_factory.mktemp("e2e")
    ws = tmp / "ws"
    (ws / "hw1").mkdir(parents=True)
    for f in ("hello.c", "bad.c"):
        shutil.copy(container.workloads / f, ws / "hw1")
    base = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    port, mport = _free_port(), _free_port()
    backend = Proc(
        [sys.executable, "-m", "watcher_backend.main"],
        {
            **base,
            "PORT": str(port),
            "DB_URL": f"sqlite:///{tmp / 'watcher.db'}",
            "WATCHER_AGENT_TOKEN": AGENT_TOKEN,
            "WATCHER_READER_TOKEN": READER_TOKEN,
        },
    )
    agent = Proc(
        [sys.executable, "-m", "watcher_procmon.main"],
        {
            **base,
            "STATE_DIR": str(tmp / "state"),
            "API_SERVER": f"http://127.0.0.1:{port}",
            "WATCHER_AGENT_TOKEN": AGENT_TOKEN,
            "METRICS_PORT": str(mport),
            "NODE_NAME": "e2e-node",
            "WATCHER_PROCMON_BPF_OBJ": str(bpf_object),
        },
    )
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {READER_TOKEN}"},
        timeout=10,
    )
    try:
        backend.wait_for("API endpoints ready")
        agent.wait_for("procmon ready")
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps(JOBS))
        cmd = container.inside_cmd(ws, jobs, tmp / "in.json")
        subprocess.run(cmd, check=True, timeout=60)
        harness = json.loads((tmp / "in.json").read_text())
        yield E2E(ws, api, agent, f"http://127.0.0.1:{mport}", harness)
    finally:
        api.close()
        agent.stop()
        backend.stop()


def _builds(api: httpx.Client) -> list[dict[str, Any]]:
    url = f"/api/v1/classes/os-1/assignments/hw1/students/{STUDENT_ID}/timeline"
    r = api.get(url, params={"kinds": "build"})
    return [i for i in r.json()["items"] if i["kind"] == "build"] if r.status_code == 200 else []


def _runs(e2e: E2E) -> dict[str, dict[str, Any]]:
    items = _wait(lambda: len(_builds(e2e.api)) >= 2 and _builds(e2e.api))
    runs = [e2e.api.get(f"/api/v1/runs/{i['run_id']}").json() for i in items]
    by_src = {r["sources"][0]["path"]: r for r in runs if r["sources"]}
    assert set(by_src) == {"bad.c", "hello.c"}, runs
    return by_src


def test_build_with_errors_reaches_the_backend(e2e: E2E) -> None:
    run = _runs(e2e)["bad.c"]
    data = (e2e.ws / "hw1" / "bad.c").read_bytes()
    assert (run["exit_code"], run["tool"], run["category"]) == (1, "gcc", "build")
    assert run["argv"] == ["gcc", "-c", "bad.c"] and run["cwd"] == "/home/coder/project/hw1"
    (src,) = run["sources"]
    assert (src["sha256"], src["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert src["snapshot_id"] is not None  # the exact code state is stored and linked
    diags = {(d["file"], d["line"], d["column"], d["severity"]) for d in run["diagnostics"]}
    assert {("bad.c", 3, 32, "error"), ("bad.c", 4, 16, "error")} <= diags
    assert "bad.c:4:16: error" in run["stderr_excerpt"]


def test_snapshot_content_is_the_compiled_bytes(e2e: E2E) -> None:
    run = _runs(e2e)["hello.c"]
    assert run["exit_code"] == 0 and run["diagnostics"] == []
    snap = run["sources"][0]["snapshot_id"]
    r = e2e.api.get(f"/api/v1/snapshots/{snap}")
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256((e2e.ws / "hw1/hello.c").read_bytes()).hexdigest()


def test_compat_build_log_has_file_size(e2e: E2E) -> None:
    _runs(e2e)
    logs = e2e.api.get(f"/api/os-1/hw1/{STUDENT_ID}/logs/build").json()
    sizes = {log["cmdline"]: log["file_size"] for log in logs}
    assert sizes == {
        "gcc -c bad.c": (e2e.ws / "hw1/bad.c").stat().st_size,
        "gcc -o hello hello.c": (e2e.ws / "hw1/hello.c").stat().st_size,
    }
    assert {log["exit_code"] for log in logs} == {0, 1}


def test_metrics_and_health(e2e: E2E) -> None:
    _runs(e2e)
    text = httpx.get(e2e.metrics_url + "/metrics").text
    assert "# HELP process_events_total Total number of process events detected" in text
    assert 'process_events_total{process_name="gcc"} 2.0' in text
    assert 'process_events_total{process_name="other"}' in text
    assert 'watcher_procmon_kernel_events_total{outcome="emitted",type="exec"}' in text
    assert "watcher_procmon_exec_to_outbox_seconds_bucket" in text
    assert STUDENT_ID not in text
    promtool = shutil.which("promtool")
    if promtool:  # scripts/install-deps.sh installs it; the format check is cheap
        check = subprocess.run(
            [promtool, "check", "metrics"], input=text, capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    health = httpx.get(e2e.metrics_url + "/health").json()
    assert health["status"] == "healthy", health


def test_startup_logs_and_sigterm_drain(e2e: E2E) -> None:
    _runs(e2e)
    log = e2e.agent.log
    for line in ("procmon starting", "eBPF programs attached", "procmon ready"):
        assert line in log
    t0 = time.monotonic()
    e2e.agent.p.send_signal(signal.SIGTERM)
    assert e2e.agent.p.wait(10) == 0
    assert time.monotonic() - t0 < 5
    e2e.agent.stop()
    assert "procmon stopped" in e2e.agent.log
    assert STUDENT_ID not in e2e.agent.log  # no student id in INFO logs
