"""Helpers for the procmon benchmarks (i, j): root check, the BPF object, the fork+exec
load generator, a "student container" (``unshare --uts`` with a ``jcode-…`` hostname),
a stub backend, a procmon agent and the BPF programs it loaded (for ``bpf_stats``)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentlib import BPF_OBJ, STUDENT_HOST, Agent
from benchlib import free_port

from watcher_procmon.objpath import build_bpf_object

HERE = Path(__file__).resolve().parent
PROGS = ("handle_exec", "handle_exit", "handle_write", "handle_sys_enter")


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("procmon benchmarks load eBPF programs: run them as root")
    if not Path("/sys/kernel/btf/vmlinux").exists():
        raise RuntimeError("this kernel has no BTF (/sys/kernel/btf/vmlinux)")
    build_bpf_object()


def build_forkexec(tmp: Path) -> Path:
    exe = tmp / "forkexec"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "procmon" / "forkexec.c")], check=True
    )
    return exe


def build_sysloop(tmp: Path) -> Path:
    exe = tmp / "sysloop"
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(exe), str(HERE / "procmon" / "sysloop.c")], check=True
    )
    return exe


def syscall_ns(exe: Path, n: int = 1_000_000, rounds: int = 5) -> float:
    """CPU ns per getppid() (best of ``rounds``): what any syscall hook adds shows here."""
    out = subprocess.run([str(exe), str(n), str(rounds)], capture_output=True, check=True)
    return float(out.stdout)


def in_container(cmd: list[str], host: str = STUDENT_HOST) -> list[str]:
    """``cmd`` inside a new UTS namespace whose hostname makes it a student container."""
    return ["unshare", "--uts", "--fork", "sh", "-c", 'hostname "$0" && exec "$@"', host, *cmd]


def forkexec(
    gen: Path, seconds: float, rate: float, workers: int, prog: list[str], container: bool = True
) -> tuple[int, float]:
    """Run the generator; (execs, seconds)."""
    cmd = [str(gen), str(seconds), str(rate), str(workers), *prog]
    out = subprocess.run(
        in_container(cmd) if container else cmd, capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[0]), float(out[1])


# Answers every event of a batch "stored" (HTTP/1.1 keep-alive, as the sender expects):
# the agent's sender then does its real work per request (batching, HTTP, parsing the
# results, acking in the outbox), in a process of its own so none of it is the stub's.
# GET /stats: how many requests and events it has had, and the newest event's creation time
# (an event_id starts with the agent's time.time_ns() in 16 hex digits).
_STUB = """
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
lock = threading.Lock()
stats = {"requests": 0, "events": 0, "newest_ns": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        with lock:
            self._answer(json.dumps(stats).encode())
    def do_POST(self):
        with lock:
            stats["requests"] += 1
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        newest = max((int(e["event_id"][:16], 16) for e in body.get("events", [])), default=0)
        with lock:
            stats["events"] += len(body.get("events", []))
            stats["newest_ns"] = max(stats["newest_ns"], newest)
        self._answer(json.dumps({"results": [{"event_id": e["event_id"], "status": "stored"}
                                             for e in body.get("events", [])]}).encode())
    def _answer(self, out):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def stub_stats(url: str) -> dict[str, int]:
    """The stub backend's counts: {"requests": n, "events": n, "newest_ns": t} (the newest
    event's creation time, from its id)."""
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as r:
        got: dict[str, int] = json.loads(r.read())
    return got


def wait_sent(url: str, after_ns: int, timeout_s: float) -> bool:
    """Wait until the stub has had an event the agent made at or after ``after_ns``
    (time.time_ns()): e.g. with ``after_ns`` taken when a traced command returned, the run of
    that command (made once its exit is read), sent with whatever the agent queued before
    it. False on timeout."""
    deadline = time.monotonic() + timeout_s
    while stub_stats(url)["newest_ns"] < after_ns:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@contextlib.contextmanager
def stub_backend() -> Iterator[str]:
    """A backend that acks every event (see _STUB); yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _STUB, str(port)])
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stub backend did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


def procmon(tmp: Path, api_server: str | None = None, token: str = "bench", **env: str) -> Agent:
    """A procmon agent with its outbox in ``tmp`` (no backend unless ``api_server``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    return Agent(
        "procmon",
        {
            "STATE_DIR": str(tmp / "procmon-state"),
            "API_SERVER": api_server or f"http://127.0.0.1:{free_port()}",
            "WATCHER_AGENT_TOKEN": token,
            # an override (a candidate object built elsewhere) wins over the source tree's
            "WATCHER_PROCMON_BPF_OBJ": os.environ.get("WATCHER_PROCMON_BPF_OBJ", str(BPF_OBJ)),
            **env,
        },
        tmp,
    )


def tracing_progs() -> dict[int, dict[str, Any]]:
    """All loaded tracing programs named like procmon's: {id: bpftool's JSON}."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "prog", "show", "--json"], capture_output=True, check=True)
    return {int(p["id"]): p for p in json.loads(out.stdout) if p.get("name") in PROGS}


def prog_stats(ids: set[int]) -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)} of the given program ids, whatever they are
    (bpf_stats: counted only while kernel.bpf_stats_enabled is 1)."""
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    out = subprocess.run([bpftool, "prog", "show", "--json"], capture_output=True, check=True)
    return {
        str(p.get("name")): (int(p.get("run_time_ns", 0)), int(p.get("run_cnt", 0)))
        for p in json.loads(out.stdout)
        if int(p["id"]) in ids
    }


def stats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    """{program name: (run_time_ns, run_cnt)} between two ``prog_stats`` readings."""
    return {
        k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after if k in before
    }


def agent_prog_ids(log_text: str) -> set[int]:
    """The ids of the programs an agent attached, from its "program ids" log line (other
    procmon instances may load programs of the same names at the same time)."""
    m = re.search(r"program ids ((?:\w+=\d+ ?)+)", log_text)
    return {int(kv.split("=")[1]) for kv in m.group(1).split()} if m else set()


def kernel_counter(m: dict[str, float], typ: str, outcome: str) -> float:
    return m.get(f'watcher_procmon_kernel_events_total{{outcome="{outcome}",type="{typ}"}}', 0.0)


def runs_total(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("process_events_total{"))


# ---- the floor probe (bench j): bench/procmon/floor.bpf.c ---------------------------------

FLOOR_PROGS = ("floor_exec", "floor_exit")
PROCMON_PKG = HERE.parent / "packages" / "procmon"


def build_floor(tmp: Path) -> Path:
    """floor.bpf.o, built by packages/procmon's Makefile as it builds procmon.bpf.o (same
    clang flags, vmlinux.h and headers)."""
    obj = tmp / "floor.bpf.o"
    src = HERE / "procmon" / "floor.bpf.c"
    subprocess.run(
        ["make", "-s", "-C", str(PROCMON_PKG), "object", f"SRC={src}", f"OUT={obj}"], check=True
    )
    return obj


class FloorProbe:
    """The loaded floor probe: its program ids and the records its reader has taken."""

    def __init__(self, ids: set[int]) -> None:
        self.ids = ids
        self.records = {"exec": 0, "exit": 0, "other": 0}

    def on_record(self, raw: bytes) -> None:
        kind = int.from_bytes(raw[:2], "little")  # pm_hdr.type
        self.records["exec" if kind == 1 else "exit" if kind == 2 else "other"] += 1


@contextlib.contextmanager
def floor_probe(obj_path: Path, prefix: str = "jcode-") -> Iterator[FloorProbe]:
    """Load and attach floor.bpf.o through the agent's libbpf binding, with a reader thread
    that consumes its ring buffer every 50 ms (as the agent's idle poll does) so it never
    fills; everything is detached and closed on exit."""
    from watcher_procmon import libbpf
    from watcher_procmon.events import PmConfig
    from watcher_procmon.tracer import CONFIG_MAP

    obj = libbpf.BpfObject(obj_path)
    stop = threading.Event()
    reader: threading.Thread | None = None
    rb: libbpf.RingBuffer | None = None
    try:
        p = prefix.encode()
        obj.map(CONFIG_MAP).set_initial_value(
            PmConfig(prefix=p, prefix_len=len(p), enabled=1, wakeup_every=256)
        )
        obj.load()
        probe = FloorProbe({obj.prog_id(name) for name in FLOOR_PROGS})
        rb = libbpf.RingBuffer(obj.map("events"), probe.on_record)
        ring = rb

        def drain() -> None:
            while not stop.wait(0.05):
                ring.consume()

        links = [obj.attach(name) for name in FLOOR_PROGS]
        reader = threading.Thread(target=drain, name="floor-reader", daemon=True)
        reader.start()
        yield probe
        for link in links:  # detached first: then the last records are all in the ring
            link.destroy()
        stop.set()
        reader.join()
        rb.consume()
    finally:
        stop.set()
        if reader is not None:
            reader.join()
        if rb is not None:
            rb.free()
        obj.close()
