"""The agent's pipeline against the real kernel: real compilers and interpreters in a student
container -> ProcessRun / FileSnapshot wire events (sources hashed at exec, diagnostics
from the compiler's stderr), compared with waitpid() and with the bytes on disk.

One module-scoped run: every job once inside the container, once outside (must emit
nothing). Runs are matched by the container's pid namespace and the job's argv.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from watcher_common.wire import Event, FileSnapshot, ProcessRun
from watcher_procmon.agent import Pipeline
from watcher_procmon.metrics import ProcmonMetrics
from watcher_procmon.tracer import Counters, Tracer, TracerConfig

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="loading BPF needs root (CAP_BPF + CAP_PERFMON); CI runs as root"
)

STUDENT = Path(__file__).resolve().parent / "workloads" / "student"
JAVAC = shutil.which("javac")

JOBS: list[dict[str, Any]] = [
    {"name": "gcc_ok", "argv": ["gcc", "-o", "hello", "hello.c"], "cwd": "hw1"},
    {"name": "gcc_err", "argv": ["gcc", "-c", "bad.c"], "cwd": "hw1"},
    {"name": "gpp_multi", "argv": ["g++", "-o", "app", "main.cpp", "util.cpp"], "cwd": "hw2"},
    {"name": "clang_warn", "argv": ["clang", "-Wall", "-c", "warn.c"], "cwd": "hw1/sub"},
    {"name": "javac_ok", "argv": ["javac", "Hello.java"], "cwd": "hw3"},
    {"name": "javac_err", "argv": ["javac", "Bad.java"], "cwd": "hw3"},
    {"name": "py_ok", "argv": ["python3", "ok.py"], "cwd": "hw4"},
    {"name": "py_raise", "argv": ["python3", "boom.py"], "cwd": "hw4"},
    {"name": "run_hello", "argv": ["./hello"], "cwd": "hw1"},
]


class ListSink:
    def __init__(self) -> None:
        self.items: list[tuple[Event, bytes | None]] = []

    def put(self, event: Event, content: bytes | None = None) -> None:
        self.items.append((event, content))


@dataclass
class Result:
    ws: Path
    inside: dict[str, Any]
    outside: dict[str, Any]
    runs: list[ProcessRun]
    snapshots: list[tuple[FileSnapshot, bytes | None]]
    outside_runs: list[ProcessRun]
    counters: Counters
    metrics: ProcmonMetrics
    seconds: float

    def run(self, job: str) -> ProcessRun:
        argv = next(j["argv"] for j in JOBS if j["name"] == job)
        got = [r for r in self.runs if r.argv == argv]
        assert len(got) == 1, f"{job}: {len(got)} runs"
        return got[0]


def _workspace(ws: Path) -> None:
    for d in ("hw1/sub", "hw2", "hw3", "hw4"):
        (ws / d).mkdir(parents=True)
    w = STUDENT.parent
    shutil.copy(w / "hello.c", ws / "hw1")
    shutil.copy(w / "bad.c", ws / "hw1")
    shutil.copy(STUDENT / "warn.c", ws / "hw1/sub")
    for f in ("main.cpp", "util.cpp", "util.h"):
        shutil.copy(STUDENT / f, ws / "hw2")
    for f in ("Hello.java", "Bad.java"):
        shutil.copy(STUDENT / f, ws / "hw3")
    for f in ("ok.py", "boom.py"):
        shutil.copy(STUDENT / f, ws / "hw4")


def _drive(cmd: list[str], result: Path, tracer: Tracer, pipe: Pipeline) -> dict[str, Any]:
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 90
    while proc.poll() is None:
        for ev in tracer.read_events(20):
            pipe.feed(ev)
        assert time.monotonic() < deadline, "harness hung"
    for ev in tracer.read_events(0):
        pipe.feed(ev)
    assert proc.returncode == 0
    data: dict[str, Any] = json.loads(result.read_text())
    data["by_name"] = {r["name"]: r for r in data["results"]}
    return data


@pytest.fixture(scope="module")
def result(bpf_object: Path, tmp_path_factory: pytest.TempPathFactory, container: Any) -> Result:
    assert JAVAC, "javac is needed (default-jdk-headless; scripts/install-deps.sh)"
    tmp = tmp_path_factory.mktemp("agent")
    ws = tmp / "ws"
    _workspace(ws)
    jobs = tmp / "jobs.json"
    jobs.write_text(json.dumps(JOBS))
    sink = ListSink()
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(sink, node="test-node", metrics=metrics)
    t0 = time.monotonic()
    with Tracer(TracerConfig(prefix="jcode-", bpf_object=bpf_object)) as tracer:
        inside = _drive(
            container.inside_cmd(ws, jobs, tmp / "in.json"), tmp / "in.json", tracer, pipe
        )
        n_inside = len(sink.items)
        outside = _drive(
            container.outside_cmd(ws, jobs, tmp / "out.json"), tmp / "out.json", tracer, pipe
        )
        counters = tracer.counters()
    seconds = time.monotonic() - t0
    mine = [e for e, _ in sink.items if isinstance(e, ProcessRun) and e.pidns == inside["pidns"]]
    outside_runs = [
        e
        for e, _ in sink.items[n_inside:]
        if isinstance(e, ProcessRun) and e.pidns == outside["pidns"]
    ]
    snaps = [(e, c) for e, c in sink.items if isinstance(e, FileSnapshot)]
    return Result(ws, inside, outside, mine, snaps, outside_runs, counters, metrics, seconds)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("job", [j["name"] for j in JOBS])
def test_run_matches_waitpid(result: Result, job: str) -> None:
    status = result.inside["by_name"][job]["status"]
    run = result.run(job)
    assert run.exit_code == (os.WEXITSTATUS(status) if os.WIFEXITED(status) else None)
    assert run.signal == (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
    assert run.core_dumped is False
    assert (run.class_div, run.student_id) == ("os-1", "202012345")
    assert run.hostname == "jcode-os-1-202012345-abc12-xyz9" and not run.identity_mismatch
    assert run.end is not None and run.start <= run.end
    assert run.start.utcoffset() is not None and run.node == "test-node"
    assert run.pid and run.ppid and run.uid == 0 and run.cgroup_id and run.mntns


def test_expected_outcomes(result: Result) -> None:
    codes = {j["name"]: result.run(j["name"]).exit_code for j in JOBS}
    assert codes == {
        "gcc_ok": 0, "gcc_err": 1, "gpp_multi": 0, "clang_warn": 0, "javac_ok": 0,
        "javac_err": 1, "py_ok": 0, "py_raise": 1, "run_hello": 0,
    }  # fmt: skip


def test_kinds_tools_assignment_cwd(result: Result) -> None:
    want = {
        "gcc_ok": ("build", "gcc", "hw1", "/home/coder/project/hw1"),
        "gpp_multi": ("build", "g++", "hw2", "/home/coder/project/hw2"),
        "clang_warn": ("build", "clang", "hw1", "/home/coder/project/hw1/sub"),
        "javac_err": ("build", "javac", "hw3", "/home/coder/project/hw3"),
        "py_raise": ("interpreter", "python", "hw4", "/home/coder/project/hw4"),
        "run_hello": ("run", "binary", "hw1", "/home/coder/project/hw1"),
    }
    for job, (kind, tool, hw, cwd) in want.items():
        r = result.run(job)
        assert (r.run_kind, r.tool, r.assignment, r.cwd) == (kind, tool, hw, cwd), job
    assert result.run("gcc_ok").output_path == "/home/coder/project/hw1/hello"
    assert result.run("run_hello").exe == "/home/coder/project/hw1/hello"


@pytest.mark.parametrize(
    ("job", "files"),
    [
        ("gcc_ok", ["hw1/hello.c"]),
        ("gcc_err", ["hw1/bad.c"]),
        ("gpp_multi", ["hw2/main.cpp", "hw2/util.cpp"]),
        ("clang_warn", ["hw1/sub/warn.c"]),
        ("javac_ok", ["hw3/Hello.java"]),
        ("javac_err", ["hw3/Bad.java"]),
        ("py_ok", ["hw4/ok.py"]),
        ("py_raise", ["hw4/boom.py"]),
    ],
)
def test_sources_carry_the_hash_of_the_bytes_compiled(
    result: Result, job: str, files: list[str]
) -> None:
    run = result.run(job)
    want = [
        (f.split("/", 1)[1], _sha(result.ws / f), (result.ws / f).stat().st_size) for f in files
    ]
    assert [(s.path, s.sha256, s.size) for s in run.source_files] == want
    # and the same bytes were snapshotted (content in the outbox, attributable to the file)
    for f, sha, size in want:
        hw = files[0].split("/", 1)[0]
        snaps = [(s, c) for s, c in result.snapshots if (s.assignment, s.path) == (hw, f)]
        assert snaps, f"no snapshot of {hw}/{f}"
        snap, content = snaps[-1]
        assert (snap.sha256, snap.size, snap.source) == (sha, size, "procmon")
        assert content is not None and hashlib.sha256(content).hexdigest() == sha
        assert (snap.class_div, snap.student_id) == ("os-1", "202012345")


def test_gcc_diagnostics_are_structured(result: Result) -> None:
    run = result.run("gcc_err")
    errors = [(d.file, d.line, d.column, d.severity) for d in run.diagnostics]
    assert ("bad.c", 3, 32, "error") in errors
    assert ("bad.c", 4, 16, "error") in errors
    msgs = {d.line: d.message for d in run.diagnostics if d.severity == "error"}
    assert msgs[3].startswith("expected expression before")
    assert "undeclared_name" in msgs[4] and "undeclared" in msgs[4]
    assert any(d.severity == "note" for d in run.diagnostics)
    assert run.stderr_excerpt and "bad.c:3:32: error" in run.stderr_excerpt


def test_clang_and_javac_diagnostics(result: Result) -> None:
    clang = result.run("clang_warn").diagnostics
    assert clang, (result.counters, result.run("clang_warn"))
    assert [(d.file, d.line, d.column, d.severity) for d in clang] == [("warn.c", 5, 6, "warning")]
    assert "unused variable 'unused'" in clang[0].message
    javac = result.run("javac_err")
    assert len(javac.diagnostics) == 1, (javac.diagnostics, javac.stderr_excerpt, result.counters)
    jd = javac.diagnostics[0]
    assert (jd.file, jd.line, jd.column, jd.severity) == ("Bad.java", 3, 17, "error")
    assert jd.message == "incompatible types: String cannot be converted to int"


def test_successful_quiet_builds_have_no_diagnostics(result: Result) -> None:
    for job in ("gcc_ok", "gpp_multi", "javac_ok"):
        run = result.run(job)
        assert run.diagnostics == [] and not run.stderr_excerpt, job


def test_student_programs_output_is_not_captured(result: Result) -> None:
    """boom.py's traceback and hello's stdout never reach the wire (privacy)."""
    for job in ("py_raise", "py_ok", "run_hello"):
        run = result.run(job)
        assert run.stderr_excerpt is None and run.diagnostics == [], job
    assert result.counters.stderr_emitted > 0
    dumped = json.dumps([r.model_dump(mode="json") for r in result.runs])
    assert "ZeroDivisionError" not in dumped


def test_build_children_are_folded_into_the_build(result: Result) -> None:
    tools = {r.tool for r in result.runs}
    assert not tools & {"cc1", "cc1plus", "as", "collect2", "ld"}, tools
    # in the kernel: no records for them at all (their pids ran nothing before)
    c = result.counters
    assert c.exec_folded >= 6 and c.exit_folded == c.exec_folded, c
    assert result.metrics.dropped.labels(reason="build_child")._value.get() == 0


def test_outside_the_container_nothing_is_emitted(result: Result) -> None:
    assert result.outside["hostname"] != "jcode-os-1-202012345-abc12-xyz9"
    assert result.outside_runs == []
    outside_pids = {r["pid"] for r in result.outside["results"]}
    assert not [
        r for r in result.runs if r.pidns == result.outside["pidns"] and r.pid in outside_pids
    ]


def test_counters_balance_no_drops(result: Result) -> None:
    c = result.counters
    assert c.balanced(), c
    assert c.dropped == 0 and c.capture_full == 0 and c.stderr_read_err == 0


def test_process_events_metric(result: Result) -> None:
    m = result.metrics.process_events
    for name, n in (("gcc", 2), ("g++", 1), ("clang", 1), ("javac", 2), ("python3", 2)):
        assert m.labels(process_name=name)._value.get() >= n, name
    assert m.labels(process_name="binary")._value.get() >= 1
    assert result.metrics.sources.labels(outcome="gone")._value.get() == 0


def test_suite_is_quick(result: Result) -> None:
    assert result.seconds < 60, result.seconds


def test_snapshot_content_is_inline_or_blob_ready(result: Result) -> None:
    for snap, content in result.snapshots:
        assert content is not None and len(content) == snap.size
        assert base64.b64encode(content)  # what the outbox will inline
