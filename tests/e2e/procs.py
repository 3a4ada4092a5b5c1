"""The three services as real processes: start, SIGTERM, SIGKILL, restart.

Written once here rather than factored out of the package tests: filemon's and procmon's
own tests each carry a small ``Proc`` class with different logging (file vs. pipe) and
that difference matters to them, so sharing was not trivial.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx

AGENT = "e2e-agent-token-0123456789abcdef"
READER = "e2e-reader-token-0123456789abcdef"
ADMIN = "e2e-admin-token-0123456789abcdef"

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bin_path(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed in the uv environment"
    return path


def wait_until(fn: Callable[[], T | None], within_s: float = 30.0, what: str = "") -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``within_s``."""
    deadline = time.monotonic() + within_s
    last: T | None = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within_s}s waiting for {what or fn}: {last!r}")
        time.sleep(0.1)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("WATCHER_", "FILEMON_"))}


class Service:
    """One long-lived service process; its output is appended to ``log`` across restarts."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, ready: str):
        self.name, self.argv, self.env, self.log, self.ready = name, argv, env, log, ready
        self.p: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, within_s: float = 60.0) -> None:
        assert self.p is None or self.p.poll() is not None, f"{self.name} already running"
        offset = len(self.text())
        with open(self.log, "ab") as fh:
            self.p = subprocess.Popen(
                self.argv, env={**_clean_env(), **self.env}, stdout=fh, stderr=fh
            )
        self.starts += 1
        deadline = time.monotonic() + within_s
        while self.ready not in self.text()[offset:]:
            assert self.p.poll() is None, f"{self.name} exited {self.p.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.text()[offset:]}"
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit status."""
        if self.p is None:
            return None
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup (a crashed pod)."""
        assert self.p is not None and self.p.poll() is None, f"{self.name} is not running"
        self.p.kill()
        self.p.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


class System:
    """backend + filemon + procmon wired together, all on loopback ports."""

    def __init__(self, tmp: Path, bpf_object: Path, snapshot_base: Path | None = None) -> None:
        self.tmp = tmp
        self.watch_root = tmp / "codes"
        self.watch_root.mkdir()
        self.snapshot_base = snapshot_base or tmp / "filemon-state"
        self.port, self.fm_port, self.pm_port = free_port(), free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.port}"
        tokens = {"WATCHER_AGENT_TOKEN": AGENT, "LOG_LEVEL": "INFO"}
        self.backend = Service(
            "backend",
            [bin_path("watcher-backend")],
            {
                "PORT": str(self.port),
                "DB_URL": f"sqlite:///{tmp / 'watcher.db'}",
                "WATCHER_AGENT_TOKEN": AGENT,
                "WATCHER_READER_TOKEN": READER,
                "WATCHER_ADMIN_TOKEN": ADMIN,
            },
            tmp / "backend.log",
            "API endpoints ready",
        )
        self.filemon = Service(
            "filemon",
            [bin_path("watcher-filemon")],
            {
                **tokens,
                "WATCH_ROOT": str(self.watch_root),
                "SNAPSHOT_BASE": str(self.snapshot_base),
                "API_SERVER": self.api_url,
                "METRICS_PORT": str(self.fm_port),
                "NODE_NAME": "e2e-node",
                # periodic rescans are off: every reconciled version must come from a
                # startup or overflow rescan the test caused
                "FILEMON_RECONCILE_INTERVAL_S": "0",
            },
            tmp / "filemon.log",
            "filemon ready",
        )
        self.procmon = Service(
            "procmon",
            [bin_path("watcher-procmon")],
            {
                **tokens,
                "STATE_DIR": str(tmp / "procmon-state"),
                "API_SERVER": self.api_url,
                "METRICS_PORT": str(self.pm_port),
                "NODE_NAME": "e2e-node",
                "WATCHER_PROCMON_BPF_OBJ": str(bpf_object),
            },
            tmp / "procmon.log",
            "procmon ready",
        )
        self.api = httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {READER}"}, timeout=15
        )

    def start(self) -> None:
        self.backend.start()
        self.filemon.start()
        self.procmon.start()

    def stop(self) -> None:
        self.api.close()
        for svc in (self.procmon, self.filemon, self.backend):
            svc.stop()

    def metrics(self, port: int) -> str:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def health(self, port: int) -> dict[str, object]:
        doc: dict[str, object] = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()
        return doc

    def outbox_events(self, port: int) -> float:
        for line in self.metrics(port).splitlines():
            if line.startswith("watcher_outbox_events "):
                return float(line.split()[1])
        raise AssertionError("no watcher_outbox_events gauge")

    def drained(self, within_s: float = 90.0) -> None:
        """Both agents' outboxes are empty (everything answered by the backend)."""
        wait_until(
            lambda: self.outbox_events(self.fm_port) == 0 and self.outbox_events(self.pm_port) == 0,
            within_s,
            "agent outboxes to drain",
        )
