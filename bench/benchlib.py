"""Shared helpers for the benchmarks in bench/ (numbers, not pass/fail).

Each benchmark starts its own backend (``watcher-backend``, one uvicorn worker) on a
temporary SQLite database, pinned to CPU 0 with ``taskset``; the load generator runs on
CPU 1. Results are printed and written as JSON to ``$BENCH_OUT/<id>.json`` (default
``.run/bench``), from which ``bench/report.py`` writes ``docs/benchmarks.md``.

The old system cannot run here: its figures are the *recorded* ones in ``OLD``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = Path(os.environ.get("BENCH_OUT", ROOT / ".run" / "bench"))
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Recorded figures of the old JCode-Watcher (it cannot be run here).
OLD = {
    "compat_write_rps": 137.0,  # req/s, compat single-event snapshot write
    "compat_write_p99_ms": 1091.0,  # ms
    "assignment_aggregate_ms": 1700.0,  # ms, GET /api/assignment/{class}/{hw} at 1.7k rows
    "assignment_aggregate_rows": 1700,
    "metrics_bytes": 18.7e6,  # bytes of /metrics after 13k requests
    "metrics_requests": 13_000,
}


@dataclass
class Metric:
    name: str
    value: float | None
    unit: str = ""
    target: str = ""  # e.g. ">= 1400"
    met: bool | None = None
    baseline: str = ""  # the old system's recorded figure, as text
    vs_baseline: str = ""  # e.g. "10.5x faster"


@dataclass
class Result:
    id: str
    title: str
    command: str
    status: str = "ok"  # ok | failed
    error: str = ""
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    other_cpu_cores: float | None = None  # CPU used by processes other than ours
    server_cpu_cores: float | None = None  # CPU the backend itself used (1.0 = a whole core)
    loadavg_before: str = ""
    date: str = ""  # when this benchmark ran (UTC)
    commit: str = ""  # git HEAD when it ran (the working tree may hold more)


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def target_check(value: float | None, op: str, bound: float) -> bool | None:
    if value is None:
        return None
    return value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    if float(x).is_integer() and abs(x) >= 1:
        digits = 0
    return f"{x:,.{digits}f}"


def ratio_text(new: float, old: float, higher_is_better: bool) -> str:
    """How the new figure compares with the old one, in words."""
    if not new or not old:
        return ""
    r = new / old

    def x(v: float) -> str:
        return f"{v:,.0f}x" if v >= 100 else f"{v:.1f}x"

    if higher_is_better:
        return f"{x(r)} higher" if r >= 1 else f"{x(1 / r)} lower (worse)"
    return f"{x(1 / r)} lower" if r <= 1 else f"{x(r)} higher (worse)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cpu: str) -> list[str]:
    """``taskset -c CPU`` prefix, or nothing if taskset/that CPU is unavailable."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > int(cpu):
        return ["taskset", "-c", cpu]
    return []


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def system_busy_ticks() -> int:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(v) for v in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals[:8]) - idle


def self_and_children_ticks() -> float:
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime) * CLK_TCK


class CpuMeter:
    """Measures how much CPU *other* processes used while a benchmark ran."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid

    def __enter__(self) -> CpuMeter:
        self.t0 = time.monotonic()
        self.busy0 = system_busy_ticks()
        self.srv0 = proc_cpu_ticks(self.server_pid)
        self.own0 = self_and_children_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.t0
        busy = system_busy_ticks() - self.busy0
        ours = (proc_cpu_ticks(self.server_pid) - self.srv0) + (
            self_and_children_ticks() - self.own0
        )
        srv = proc_cpu_ticks(self.server_pid) - self.srv0
        self.other_cores = max(0.0, (busy - ours) / CLK_TCK / wall) if wall > 0 else 0.0
        self.server_cores = srv / CLK_TCK / wall if wall > 0 else 0.0
        self.wall = wall


class Backend:
    """A ``watcher-backend`` on a temp SQLite DB, pinned to SERVER_CPU; stopped on exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"watcher-bench-{name}-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.agent_token = secrets.token_urlsafe(24)
        self.reader_token = secrets.token_urlsafe(24)
        self.admin_token = secrets.token_urlsafe(24)
        self.log_path = self.tmp / "backend.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def exe(self) -> str:
        override = os.environ.get("BENCH_BACKEND_EXE")  # e.g. another build of the backend
        if override:
            return override
        venv = ROOT / ".venv" / "bin" / "watcher-backend"
        if venv.exists():
            return str(venv)
        found = shutil.which("watcher-backend")
        if not found:
            raise RuntimeError("watcher-backend not found (run scripts/install-deps.sh)")
        return found

    def __enter__(self) -> Backend:
        env = dict(os.environ)
        env.update(
            PORT=str(self.port),
            DB_URL=f"sqlite:///{self.tmp}/watcher.db",
            WATCHER_AGENT_TOKEN=self.agent_token,
            WATCHER_READER_TOKEN=self.reader_token,
            WATCHER_ADMIN_TOKEN=self.admin_token,
            LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        )
        cmd = [*taskset(SERVER_CPU), self.exe()]
        log(f"starting backend: {' '.join(cmd)} (port {self.port}, db in {self.tmp})")
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"backend exited at startup:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"backend not healthy after 60 s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

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
        if os.environ.get("BENCH_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def db_path(self) -> Path:
        return self.tmp / "watcher.db"


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        commit = subprocess.check_output(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], text=True
        ).strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": commit,
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ""


def run_bench(bench_id: str, title: str, body: Any) -> int:
    """Run ``body(result)``; print and save the result. Exit code 0 even for missed targets."""
    command = "uv run python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    result = Result(
        id=bench_id,
        title=title,
        command=command,
        loadavg_before=loadavg(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        commit=str(machine_info()["commit"]),
    )
    log(f"{bench_id}: {title}")
    t0 = time.monotonic()
    try:
        body(result)
    except Exception as e:  # record the failure, keep going with the other benchmarks
        result.status = "failed"
        result.error = f"{type(e).__name__}: {e}"
    result.wall_s = round(time.monotonic() - t0, 1)
    print_result(result)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{bench_id}.json").write_text(json.dumps(asdict(result), indent=2))
    return 0 if result.status == "ok" else 1


def print_result(r: Result) -> None:
    print()
    print(f"== {r.id}: {r.title} — {r.status} ({r.wall_s}s)")
    if r.error:
        print(f"   error: {r.error}")
    for m in r.metrics:
        met = "" if m.met is None else ("  [target met]" if m.met else "  [target MISSED]")
        line = f"   {m.name}: {fmt(m.value, 2)} {m.unit}".rstrip()
        if m.target:
            line += f"   target {m.target}{met}"
        if m.baseline:
            line += f"   | old system (recorded figure, not re-measured): {m.baseline}"
            if m.vs_baseline:
                line += f" → {m.vs_baseline}"
        print(line)
    for n in r.notes:
        print(f"   note: {n}")
    if r.server_cpu_cores is not None:
        print(f"   the backend used ≈{r.server_cpu_cores:.2f} of its 1 pinned CPU core")
    if r.other_cpu_cores is not None:
        print(f"   other processes used ≈{r.other_cpu_cores:.2f} CPU cores during the measurement")
    print(flush=True)
