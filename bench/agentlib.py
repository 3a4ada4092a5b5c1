"""Helpers for the agent benchmarks (filemon f-h, procmon i-j): run the real
``watcher-filemon`` / ``watcher-procmon`` processes, scrape their /metrics, change a sysctl
for the duration of a benchmark and restore it, and describe a process's memory and CPU.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchlib import ROOT, free_port, log, proc_cpu_ticks

VENV_BIN = ROOT / ".venv" / "bin"
BPF_OBJ = ROOT / "packages" / "procmon" / "build" / "procmon.bpf.o"
STUDENT_HOST = "jcode-os-1-202012345-bench-x"


class Agent:
    """A ``watcher-filemon`` / ``watcher-procmon`` process; SIGTERM (then SIGKILL) on exit."""

    def __init__(self, name: str, env: dict[str, str], tmp: Path, cpu: str = "") -> None:
        self.name = name
        self.port = free_port()
        self.log_path = tmp / f"{name}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")},
            "METRICS_PORT": str(self.port),
            "NODE_NAME": "bench",
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "INFO"),
            **env,
        }
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> Agent:
        cmd = [str(VENV_BIN / f"watcher-{self.name}")]
        if self.cpu:
            cmd = ["taskset", "-c", self.cpu, *cmd]
        log(f"starting {' '.join(cmd)} (metrics port {self.port}, log {self.log_path})")
        with self.log_path.open("ab") as fh:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_log(self, needle: str, timeout_s: float = 60) -> float:
        """Seconds since start when ``needle`` appeared in the log."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no {needle!r} from {self.name} in {timeout_s}s:\n{self.tail()}"
                )
            time.sleep(0.05)
        return time.monotonic() - self.started

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.text().splitlines()[-n:])

    def __exit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def pid(self) -> int:
        """The agent's own pid (the child of ``taskset``, which execs, so the same)."""
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        return scrape(f"http://127.0.0.1:{self.port}/metrics")

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_ticks(self) -> int:
        return proc_cpu_ticks(self.pid)

    def cpu_ns(self) -> int:
        """On-CPU time of the agent's live threads in ns (schedstat: exact, where
        utime+stime come in 10 ms ticks). Threads that ended meanwhile are not counted:
        compare over a window in which the agent starts and stops none."""
        total = 0
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            with contextlib.suppress(OSError):
                total += int(Path(f"/proc/{self.pid}/task/{tid}/schedstat").read_text().split()[0])
        return total


_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)$")


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (labels exactly as exposed)."""
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m:
            with contextlib.suppress(ValueError):
                out[m.group(1)] = float(m.group(2))
    return out


def histogram_quantile(metrics: dict[str, float], name: str, q: float) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (like Prometheus, no interpolation
    beyond the bucket: a conservative figure). None if the histogram is empty."""
    buckets: list[tuple[float, float]] = []
    for key, value in metrics.items():
        m = re.fullmatch(rf'{re.escape(name)}_bucket\{{le="([^"]+)"\}}', key)
        if m:
            buckets.append((float(m.group(1)), value))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, count in buckets:
        if count >= q * total:
            return le
    return None


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextlib.contextmanager
def sysctl(path: str, value: str) -> Iterator[str]:
    """Write ``value`` to /proc/sys/``path`` for the block; the old value is restored after,
    whatever happens. Yields the old value."""
    f = Path("/proc/sys") / path
    old = f.read_text().strip()
    if old == value:
        yield old
        return
    log(f"sysctl {path}: {old} -> {value} (restored afterwards)")
    f.write_text(value)
    try:
        yield old
    finally:
        f.write_text(old)
        log(f"sysctl {path}: restored to {old}")


@contextlib.contextmanager
def tmpfs_dir(prefix: str) -> Iterator[Path]:
    """A temporary directory on a tmpfs (/dev/shm) when there is one, else in $TMPDIR."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield d
    finally:
        if os.environ.get("BENCH_KEEP_TMP") != "1":
            subprocess.run(["rm", "-rf", str(d)], check=False)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]
