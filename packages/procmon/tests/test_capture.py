"""Capture-on-exec reads (through a real process's /proc/<pid>/root) and the diagnostics
parser on real compiler output shapes. No BPF needed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from watcher_common.wire import ProcessRun
from watcher_procmon.agent import Pipeline
from watcher_procmon.diagnostics import StderrCollector, parse
from watcher_procmon.events import ExecEvent, ExitEvent, StderrEvent
from watcher_procmon.metrics import ProcmonMetrics
from watcher_procmon.sources import (
    MAX_SOURCE_BYTES,
    ProcessRoot,
    SourceRead,
    capture_sources,
    read_sources,
)


def _fork_ns(pid: int) -> int:
    """start_boottime as the kernel records it, rebuilt from /proc (tick resolution)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "30"], cwd=tmp_path)
    time.sleep(0.05)
    yield p
    p.kill()
    p.wait()


def test_reads_hash_and_content(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    src = tmp_path / "학생 #1.c"
    src.write_bytes(b"int main(void) { return 0; }\n")
    (tmp_path / "bin.o").write_bytes(b"\x7fELF\0\0\0")
    (tmp_path / "big.c").write_bytes(b"x" * (MAX_SOURCE_BYTES + 1))
    got = read_sources(
        sleeper.pid,
        _fork_ns(sleeper.pid),
        str(tmp_path),
        ("학생 #1.c", "bin.o", "big.c", "nope.c", "."),
    )
    by = {Path(r.path).name: r for r in got}
    ok = by["학생 #1.c"]
    assert ok.status == "ok" and ok.content == src.read_bytes()
    assert ok.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert by["bin.o"].status == "binary" and by["bin.o"].sha256 and by["bin.o"].content is None
    assert by["big.c"].status == "too_large" and by["big.c"].sha256 is None
    assert by["nope.c"].status == "missing"
    assert by[tmp_path.name].status == "not_regular"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root; CI runs as root")
def test_symlinks_cannot_leave_the_process_root(tmp_path: Path) -> None:
    """A process chrooted into tmp_path: an absolute symlink and ".." resolve inside its
    root (openat2 RESOLVE_IN_ROOT), never to the node's files."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_bytes(b"inside\n")
    (tmp_path / "abs.c").symlink_to("/../../../../etc/hostname")
    (tmp_path / "rel.c").symlink_to("../../../../etc/hostname")
    (tmp_path / "gone.c").symlink_to("/etc/passwd")  # exists on the node, not inside
    code = "import os, sys, time; os.chroot(sys.argv[1]); os.chdir('/'); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)])
    try:
        deadline = time.monotonic() + 10
        while os.readlink(f"/proc/{p.pid}/root") != str(tmp_path):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        got = read_sources(
            p.pid, _fork_ns(p.pid), "/", ("abs.c", "rel.c", "gone.c", "/../etc/hostname")
        )
    finally:
        p.kill()
        p.wait()
    assert [(r.status, r.content) for r in got] == [
        ("ok", b"inside\n"),
        ("ok", b"inside\n"),
        ("missing", None),
        ("ok", b"inside\n"),
    ]


def test_magic_links_are_refused(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    """/proc/self/root-style magic links would jump out of a container: refused."""
    (tmp_path / "magic.c").symlink_to(f"/proc/{os.getpid()}/root/etc/hostname")
    root = ProcessRoot.open(sleeper.pid, _fork_ns(sleeper.pid))
    assert root is not None
    with root:
        assert root.read(str(tmp_path / "magic.c")).status == "error"


def test_gone_or_recycled_pid_is_not_read(tmp_path: Path) -> None:
    p = subprocess.Popen(["true"])
    p.wait()
    got = read_sources(p.pid, 0, str(tmp_path), ("a.c",))
    assert [(Path(r.path).name, r.status, r.sha256) for r in got] == [("a.c", "gone", None)]
    me = os.getpid()
    assert ProcessRoot.open(me, _fork_ns(me) + 10 * 1_000_000_000) is None  # another start


GCC = """\
bad.c: In function \u2018main\u2019:
bad.c:3:32: error: expected expression before \u2018;\u2019 token
    3 |         int x = "not an int" + ;
      |                                ^
bad.c:4:16: error: \u2018undeclared_name\u2019 undeclared (first use in this function)
bad.c:4:16: note: each undeclared identifier is reported only once for each function it appears in
"""
LINK = """\
/usr/bin/ld: /tmp/ccq1.o: in function `main':
hello.c:(.text+0x9): undefined reference to `foo'
collect2: error: ld returned 1 exit status
"""
JAVAC = """\
Bad.java:3: error: incompatible types: String cannot be converted to int
        int x = "text";
                ^
error: file not found: X.java
1 error
"""


def test_parse_gcc() -> None:
    got = [(d.file, d.line, d.column, d.severity) for d in parse(GCC)]
    assert got == [
        ("bad.c", 3, 32, "error"),
        ("bad.c", 4, 16, "error"),
        ("bad.c", 4, 16, "note"),
    ]


def test_parse_linker_and_javac() -> None:
    link = parse(LINK)
    assert [(d.file, d.severity) for d in link] == [("hello.c", "error"), ("", "error")]
    assert link[0].message == "undefined reference to `foo'"
    java = parse(JAVAC)
    assert [(d.file, d.line, d.column) for d in java] == [("Bad.java", 3, 17), ("", None, None)]
    assert parse("\x1b[01;31mfatal error: \x1b[0mno input files\n")[0].severity == "fatal"


def test_collector_keeps_each_writer_whole() -> None:
    c = StderrCollector()
    for tgid, data in ((11, b"a.c:1:1: err"), (12, b"x.c:2:2: warning: w\n"), (11, b"or: e\n")):
        c.add(StderrEvent(ts_ns=1, tgid=tgid, build_tgid=10, data=data, orig_len=len(data)))
    out = c.finish(10)
    assert out is not None and out.text == "a.c:1:1: error: e\nx.c:2:2: warning: w\n"
    assert [d.severity for d in out.diagnostics] == ["error", "warning"]
    assert c.finish(10) is None and len(c) == 0


# ---- a process gone before capture: read through a live stand-in of its pod -------------


def _mntns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


@pytest.fixture
def exited(tmp_path: Path) -> tuple[int, int, Path]:
    """A "compiler" that already exited (pid, fork time) and the source it was given."""
    src = tmp_path / "fast.c"
    src.write_bytes(b"int fast;\n")
    fork_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid, fork_ns, src


def test_exited_process_is_read_through_its_parent(exited: tuple[int, int, Path]) -> None:
    pid, fork_ns, src = exited
    me = os.getpid()
    reads, via = capture_sources(
        pid, fork_ns, str(src.parent), ("fast.c",), ppid=me, mntns=_mntns(me)
    )
    assert via == "parent"
    assert [(r.status, r.sha256) for r in reads] == [
        ("ok", hashlib.sha256(b"int fast;\n").hexdigest())
    ]


def test_exited_process_is_read_through_a_peer(
    exited: tuple[int, int, Path], sleeper: subprocess.Popen[bytes]
) -> None:
    pid, fork_ns, src = exited
    mntns = _mntns(os.getpid())
    stale = (sleeper.pid, _fork_ns(sleeper.pid) + 10 * 1_000_000_000)  # a recycled pid
    args = (pid, fork_ns, str(src.parent), ("fast.c",))
    assert capture_sources(*args, ppid=0, mntns=mntns, peers=[stale])[1] == "missing"
    peer = (sleeper.pid, _fork_ns(sleeper.pid))
    reads, via = capture_sources(*args, ppid=0, mntns=mntns, peers=[stale, peer])
    assert via == "peer" and reads[0].status == "ok"


def test_stand_ins_must_be_provably_of_the_same_pod(exited: tuple[int, int, Path]) -> None:
    pid, fork_ns, src = exited
    me = os.getpid()
    args = (pid, fork_ns, str(src.parent), ("fast.c",))
    # namespace unknown: no telling what the parent sees
    assert capture_sources(*args, ppid=me)[1] == "missing"
    # a "parent" younger than the child's fork: the parent's pid was recycled
    early = _fork_ns(me) - 10 * 1_000_000_000
    got = capture_sources(pid, early, str(src.parent), ("fast.c",), ppid=me, mntns=_mntns(me))
    assert got == ([SourceRead(str(src), "gone")], "missing")


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root; CI runs as root")
def test_a_parent_in_another_mount_namespace_is_never_used(
    exited: tuple[int, int, Path],
) -> None:
    pid, fork_ns, src = exited
    other = subprocess.Popen(["unshare", "--mount", "sleep", "30"])  # exec'd in place
    try:
        deadline = time.monotonic() + 5
        while _mntns(other.pid) == _mntns(os.getpid()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        reads, via = capture_sources(
            pid, fork_ns, str(src.parent), ("fast.c",), ppid=other.pid, mntns=_mntns(os.getpid())
        )
        assert via == "missing" and reads[0].sha256 is None
    finally:
        other.kill()
        other.wait()


def test_pipeline_captures_an_exited_compile_through_its_parent(
    exited: tuple[int, int, Path],
) -> None:
    """The race end to end in the agent: the exec is handled after gcc exited."""
    pid, fork_ns, src = exited
    me = os.getpid()
    items: list[object] = []

    class Sink:
        def put(self, event: object, content: bytes | None = None) -> None:
            items.append(event)

    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(Sink(), metrics=metrics)
    ev = ExecEvent(
        ts_ns=fork_ns, tgid=pid, ns_tgid=pid, ppid=me, uid=0, gid=0, flags=0, cgroup_id=0,
        fork_ns=fork_ns, pidns=0, mntns=_mntns(me), nodename="jcode-os-1-202600001",
        filename="/usr/bin/gcc", argv=("gcc", "-c", "fast.c"), argv_truncated=False,
        argv_len=17, exe="/usr/bin/gcc", cwd=str(src.parent),
    )  # fmt: skip
    pipe.feed(ev)
    pipe.feed(ExitEvent(ts_ns=fork_ns + 1000, tgid=pid, status=0, last_tid=pid))
    (run,) = [e for e in items if isinstance(e, ProcessRun)]
    assert run.source_files[0].sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert metrics.source_capture.labels(via="parent")._value.get() == 1
