"""One ring buffer read -> one outbox transaction; what that changes must not change what
is captured (order, dedup, a full outbox)."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry

from watcher_common.identity import IdentityConfig
from watcher_common.outbox import Outbox
from watcher_common.wire import FileSnapshot, ProcessRun
from watcher_procmon.agent import Pipeline
from watcher_procmon.events import Event, ExecEvent, ExitEvent
from watcher_procmon.metrics import ProcmonMetrics

HOST = "jcode-os-1-202600001"


def _exec(pid: int, ts: int) -> ExecEvent:
    return ExecEvent(
        ts_ns=ts, tgid=pid, ns_tgid=pid, ppid=1, uid=1000, gid=1000, flags=0, cgroup_id=0,
        fork_ns=ts, pidns=0, mntns=0, nodename=HOST, filename="/bin/true", argv=("true",),
        argv_truncated=False, argv_len=5, exe="/usr/bin/true", cwd="/home/coder/project/hw1",
    )  # fmt: skip


def _runs(n: int, first_pid: int = 1000) -> list[Event]:
    evs: list[Event] = []
    for i in range(n):
        pid = first_pid + i
        evs += [_exec(pid, 10_000 + i * 10), ExitEvent(10_005 + i * 10, pid, i << 8, pid)]
    return evs


def _workspace(tmp_path: Path) -> tuple[Path, IdentityConfig]:
    """A student's assignment directory and the identity config that maps it (the test
    process plays the compiler: its own /proc entry is read)."""
    ws = tmp_path / "os-1-202600001" / "hw1"
    ws.mkdir(parents=True)
    return ws, IdentityConfig(container_roots=(f"{tmp_path}/{{workspace}}",))


def _my_fork_ns() -> int:
    """This process's start time as an exec record carries it (tick resolution)."""
    ticks = int(Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _pids(outbox: Outbox) -> list[int]:
    batch = outbox.next_batch(10_000, 1 << 30)
    outbox.release(e.event_id for e in batch)
    return [ProcessRun.model_validate_json(e.body).pid for e in batch]


def test_a_read_is_stored_in_one_transaction_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    commits: list[int] = []
    outbox.add_listener(lambda: commits.append(outbox.stats().events))
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, metrics=metrics)
    pipe.feed_many(_runs(20))
    assert commits == [20]  # one commit for the whole read
    assert _pids(outbox) == list(range(1000, 1020))
    assert pipe.runs == 20
    assert metrics.process_events.labels(process_name="other")._value.get() == 20
    pipe.feed_many([])  # an empty read writes nothing
    assert commits == [20]
    pipe.close()
    outbox.close()


def test_a_batch_over_budget_stores_what_fits_one_by_one(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "probe.db")
    Pipeline(probe, metrics=ProcmonMetrics(CollectorRegistry())).feed_many(_runs(1))
    one = probe.stats().bytes
    probe.close()
    # room for 3 runs, not for the read's 5: the batch is refused as a whole, then the
    # first 3 are stored alone and the last 2 counted as dropped, as unbatched puts would
    outbox = Outbox(tmp_path / "outbox.db", budget_bytes=one * 3 + one // 2)
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, metrics=metrics)
    pipe.feed_many(_runs(5))
    assert _pids(outbox) == [1000, 1001, 1002]
    assert pipe.runs == 3
    assert metrics.dropped.labels(reason="outbox_full")._value.get() == 2
    assert metrics.process_events.labels(process_name="other")._value.get() == 3
    pipe.close()
    outbox.close()


def test_unbatched_feed_still_stores_at_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    pipe = Pipeline(outbox, metrics=ProcmonMetrics(CollectorRegistry()))
    for ev in _runs(2):
        pipe.feed(ev)
    assert _pids(outbox) == [1000, 1001]
    pipe.close()
    outbox.close()


def test_exec_to_outbox_is_observed_once_the_batch_commits(tmp_path: Path) -> None:
    """A python3 exec whose script is read (through this very process's root)."""
    script = tmp_path / "main.py"
    script.write_text("print(1)\n")
    me = os.getpid()
    ticks = int(Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19])
    fork_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    ev = replace(
        _exec(me, time.clock_gettime_ns(time.CLOCK_BOOTTIME)),
        fork_ns=fork_ns,
        exe="/usr/bin/python3",
        filename="/usr/bin/python3",
        argv=("python3", "main.py"),
        cwd=str(tmp_path),
    )
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, metrics=metrics)
    pipe.feed_many([ev, ExitEvent(ev.ts_ns + 1000, me, 0, me)])
    hist = metrics.exec_to_outbox.collect()[0].samples
    assert [s.value for s in hist if s.name.endswith("_count")] == [1.0]
    batch = outbox.next_batch(10, 1 << 20)
    (run,) = [ProcessRun.model_validate_json(e.body) for e in batch]
    assert run.source_files[0].sha256 == hashlib.sha256(b"print(1)\n").hexdigest()
    pipe.close()
    outbox.close()


def test_a_refused_snapshot_is_sent_again_and_the_stored_one_is_not(tmp_path: Path) -> None:
    """The dedup memory (last version sent per file) is undone for a refused put: the
    refused version goes out at its next compile, the one stored before does not."""
    ws, ident = _workspace(tmp_path)
    src = ws / "main.c"
    me, fork_ns = os.getpid(), _my_fork_ns()
    outbox = Outbox(tmp_path / "outbox.db")
    pipe = Pipeline(outbox, identity=ident, metrics=ProcmonMetrics(CollectorRegistry()))

    def compile_(text: str) -> None:
        src.write_text(text)
        ts = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        ev = replace(
            _exec(me, ts),
            fork_ns=fork_ns,
            exe="/usr/bin/gcc",
            filename="/usr/bin/gcc",
            argv=("gcc", "-c", "main.c"),
            cwd=str(ws),
        )
        pipe.feed_many([ev, ExitEvent(ts + 1000, me, 0, me)])

    def snapshots() -> list[str]:
        batch = outbox.next_batch(10_000, 1 << 30)
        outbox.release(e.event_id for e in batch)
        return [
            FileSnapshot.model_validate_json(e.body).sha256 or ""
            for e in batch
            if e.kind == "file.snapshot"
        ]

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    compile_("int a;\n")
    assert snapshots() == [sha("int a;\n")]
    budget = outbox.budget_bytes
    outbox.budget_bytes = outbox.stats().bytes  # full: every put is refused
    compile_("int b;\n")
    assert snapshots() == [sha("int a;\n")] and pipe.snapshots == 1
    outbox.budget_bytes = budget
    compile_("int a;\n")  # the version the outbox has: not sent again
    assert snapshots() == [sha("int a;\n")]
    compile_("int b;\n")  # the refused version: sent now
    assert snapshots() == [sha("int a;\n"), sha("int b;\n")] and pipe.snapshots == 2
    pipe.close()
    outbox.close()


def test_held_reads_are_stored_together_once_due(tmp_path: Path) -> None:
    """With hold_s, a read's write waits for the next reads: one transaction, in order,
    counted only once it is stored; an empty read holds nothing."""
    outbox = Outbox(tmp_path / "outbox.db")
    commits: list[int] = []
    outbox.add_listener(lambda: commits.append(outbox.stats().events))
    pipe = Pipeline(outbox, metrics=ProcmonMetrics(CollectorRegistry()))
    pipe.feed_many([], hold_s=60)
    assert pipe.commit_due_in() is None
    pipe.feed_many(_runs(3), hold_s=60)
    due = pipe.commit_due_in()
    assert due is not None and 59 < due <= 60
    pipe.feed_many(_runs(2, first_pid=2000), hold_s=60)
    assert commits == [] and pipe.runs == 0  # not stored, not counted yet
    pipe.commit()
    assert commits == [5] and pipe.runs == 5 and pipe.commit_due_in() is None
    assert _pids(outbox) == [1000, 1001, 1002, 2000, 2001]
    pipe.feed_many(_runs(1, first_pid=3000), hold_s=0.01)
    time.sleep(0.02)
    pipe.feed_many([], hold_s=0.01)  # the next read after the hold: written now
    assert commits == [5, 6]
    pipe.feed_many(_runs(1, first_pid=4000), hold_s=60)
    pipe.feed_many(_runs(1, first_pid=5000))  # a read that holds nothing: all written now
    assert commits == [5, 6, 8]
    pipe.feed_many(_runs(1, first_pid=6000), hold_s=60)
    pipe.flush()  # at shutdown: what is held is written
    assert commits == [5, 6, 8, 9] and pipe.runs == 9
    pipe.close()
    outbox.close()


def test_held_runs_are_made_when_stored_and_an_unsendable_one_is_dropped_alone(
    tmp_path: Path,
) -> None:
    """A held read's runs are encoded when the batch is stored; one that cannot be sent
    (an exe path over the wire's 4096 characters) is counted as invalid there and the
    others are stored, in order."""
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, metrics=metrics)
    evs = _runs(3)
    evs[2] = replace(evs[2], exe="/x" * 3000)  # the second run's exec
    pipe.feed_many(evs, hold_s=60)
    assert _pids(outbox) == [] and metrics.dropped.labels(reason="invalid")._value.get() == 0
    pipe.commit()
    assert _pids(outbox) == [1000, 1002] and pipe.runs == 2
    assert metrics.dropped.labels(reason="invalid")._value.get() == 1
    pipe.close()
    outbox.close()


def test_build_children_end_without_a_run(tmp_path: Path) -> None:
    """A compiler's pass (build_tgid of another process) sends nothing and is counted as
    a build child; the program it replaced in its pid still gets its run, and a child that
    execs something outside the build is an ordinary run again."""
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, metrics=metrics)
    child = replace(_exec(501, 100), build_tgid=500, exe="/usr/lib/gcc/cc1", argv=("cc1",))
    shell = _exec(502, 200)
    pipe.feed_many(
        [
            child,
            ExitEvent(150, 501, 0, 501),
            shell,
            replace(_exec(502, 300), build_tgid=500),  # replaces /bin/true in pid 502
            replace(_exec(502, 400), build_tgid=0),  # and leaves the build
            ExitEvent(500, 502, 3 << 8, 502),
        ]
    )
    runs = [ProcessRun.model_validate_json(e.body) for e in outbox.next_batch(100, 1 << 30)]
    assert [(r.pid, r.start.microsecond, r.exit_code) for r in runs] == [
        (502, pipe.pairer.clock.to_utc(200).microsecond, None),
        (502, pipe.pairer.clock.to_utc(400).microsecond, 3),
    ]
    assert metrics.dropped.labels(reason="build_child")._value.get() == 2
    assert pipe.pending == {}
    pipe.feed_many([replace(_exec(503, 600), build_tgid=500)])
    pipe.flush()  # still running at shutdown: no run either
    assert metrics.dropped.labels(reason="build_child")._value.get() == 3 and pipe.runs == 2
    pipe.close()
    outbox.close()


class _FailingTracer:
    """Hands out one read, then fails as a broken ring buffer would."""

    class config:  # the attribute TracerLoop reads
        poll_ms = 50

    def __init__(self, first: list[Event]) -> None:
        self.reads = [first]

    def read_events(self, timeout_ms: int | None = None) -> list[Event]:
        if not self.reads:
            raise RuntimeError("ring buffer gone")
        return self.reads.pop()

    def wait(self, timeout_ms: int) -> bool:
        return bool(self.reads)

    def counters(self) -> SimpleNamespace:
        return SimpleNamespace(dropped=0)


def test_a_failing_reader_still_writes_what_it_held(tmp_path: Path) -> None:
    from watcher_procmon.main import TracerLoop

    outbox = Outbox(tmp_path / "outbox.db")
    pipe = Pipeline(outbox, metrics=ProcmonMetrics(CollectorRegistry()))
    loop = TracerLoop(_FailingTracer(_runs(3)), pipe, None, hold_s=60, gap_s=0)  # type: ignore[arg-type]
    loop.start()
    loop.stop(5)
    assert isinstance(loop.error, RuntimeError)
    assert _pids(outbox) == [1000, 1001, 1002] and pipe.runs == 3
    outbox.close()


class _ScriptedTracer(_FailingTracer):
    """Hands out the given reads, in order, each as if its records were already waiting."""

    def __init__(self, *reads: list[Event]) -> None:
        self.reads = list(reversed(reads))


def test_while_compilers_run_new_sources_are_written_at_once_and_runs_wait(
    tmp_path: Path,
) -> None:
    """While a build runs, a read that captured a source the outbox does not have is
    written at once (exec -> outbox is bounded), with whatever earlier reads held; reads
    of runs only, or of compiles whose sources are unchanged, wait up to build_hold_s.
    exec -> outbox of an unchanged source is observed at its capture."""
    from watcher_procmon.main import TracerLoop

    ws, ident = _workspace(tmp_path)
    src = ws / "main.c"
    me, fork_ns = os.getpid(), _my_fork_ns()
    mntns = os.stat(f"/proc/{me}/ns/mnt").st_ino
    outbox = Outbox(tmp_path / "outbox.db")
    metrics = ProcmonMetrics(CollectorRegistry())
    pipe = Pipeline(outbox, identity=ident, metrics=metrics)

    def compile_(ts: int) -> list[Event]:
        ev = replace(
            _exec(me, ts),
            ppid=os.getppid(),
            fork_ns=fork_ns,
            mntns=mntns,
            exe="/usr/bin/gcc",
            filename="/usr/bin/gcc",
            argv=("gcc", "-c", "main.c"),
            cwd=str(ws),
        )
        return [ev, ExitEvent(ts + 1000, me, 0, me)]

    def kinds() -> list[str]:
        """What was written since the last call."""
        batch = outbox.next_batch(10_000, 1 << 30)
        outbox.ack([e.event_id for e in batch])
        return [e.kind.split(".")[1] for e in batch]

    def observed() -> float:
        return sum(b.get() for b in metrics.exec_to_outbox._buckets)

    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    tracer = _ScriptedTracer(
        compile_(now),  # the first compile: no build yet, a lone read written at once
        _runs(2),  # the build's runs: held
        compile_(now + 10_000),  # a changed source: written at once, with the held runs
        compile_(now + 20_000),  # unchanged: held
        _runs(1, 3000),
    )
    loop = TracerLoop(tracer, pipe, None, hold_s=0, gap_s=0, build_gap_s=0.001, build_hold_s=60)  # type: ignore[arg-type]
    src.write_text("int a;\n")
    loop.step()
    assert kinds() == ["snapshot", "run"] and pipe.compiled_since(time.monotonic() - 0.5)
    assert observed() == 1
    loop.step()
    due = pipe.commit_due_in()
    assert due is not None and 59 < due <= 60 and kinds() == []
    src.write_text("int b;\n")
    loop.step()
    assert pipe.commit_due_in() is None
    assert kinds() == ["run", "run", "snapshot", "run"] and observed() == 2
    loop.step()
    assert pipe.commit_due_in() is not None and kinds() == []
    assert observed() == 3  # nothing to store: observed at the capture
    loop.step()
    assert kinds() == [] and pipe.runs == 4
    pipe.commit()
    assert kinds() == ["run", "run"] and pipe.runs == 6
    # read through the namespace's anchor, the parent (see test_capture)
    assert metrics.source_capture.labels(via="parent")._value.get() == 3
    pipe.close()
    outbox.close()


class _TimedTracer(_ScriptedTracer):
    """A scripted tracer that records when it was waited on and read, and how."""

    def __init__(self, *reads: list[Event]) -> None:
        super().__init__(*reads)
        self.calls: list[tuple[str, int | None, float]] = []

    def wait(self, timeout_ms: int) -> bool:
        self.calls.append(("wait", timeout_ms, time.monotonic()))
        return super().wait(timeout_ms)

    def read_events(self, timeout_ms: int | None = None) -> list[Event]:
        self.calls.append(("read", timeout_ms, time.monotonic()))
        return super().read_events(timeout_ms)


def test_a_build_read_waits_the_gap_after_its_wakeup(tmp_path: Path) -> None:
    """While a build runs, the reader waits for a wakeup, then build_gap_s, and only then
    reads (everything there is): compiles that follow within the gap share the read."""
    from watcher_procmon.main import TracerLoop

    outbox = Outbox(tmp_path / "outbox.db")
    pipe = Pipeline(outbox, metrics=ProcmonMetrics(CollectorRegistry()))
    gcc = replace(_exec(2000, 500), exe="/usr/bin/gcc", argv=("gcc", "-c", "x.c"))
    tracer = _TimedTracer([gcc], _runs(2))
    loop = TracerLoop(tracer, pipe, None, hold_s=0, gap_s=0, build_gap_s=0.05)  # type: ignore[arg-type]
    loop.step()  # the compile: a plain read (no build yet)
    assert [c[:2] for c in tracer.calls] == [("read", 50)]
    loop.step()  # a build step: wait, the gap, forget the wakeups it takes, read
    (_, _, waited), drained, (what, timeout, read_at) = tracer.calls[1:]
    assert drained[:2] == ("wait", 0)
    assert what == "read" and timeout == 0 and read_at - waited >= 0.05
    assert pipe.commit_due_in() is not None  # the runs are held
    pipe.close()
    outbox.close()


class _IdleTracer(_FailingTracer):
    """Waits its whole timeout (recorded) unless a read was queued in ``reads``."""

    def __init__(self) -> None:
        self.timeouts: list[int | None] = []
        self.reads: list[list[Event]] = []

    def read_events(self, timeout_ms: int | None = None) -> list[Event]:
        self.timeouts.append(timeout_ms)
        if self.reads:
            return self.reads.pop()
        time.sleep((timeout_ms or 0) / 1e3)
        return []


def test_idle_poll_backs_off_and_a_record_brings_it_back(tmp_path: Path) -> None:
    """An idle reader polls less often, up to IDLE_POLL_MS: only records sent without a
    wakeup wait for it (exits, and execs of programs that make no event before their
    exit; compilers' and interpreters' execs wake the reader). A read with records
    brings the poll back to poll_ms."""
    from watcher_procmon.main import IDLE_POLL_MS, TracerLoop

    outbox = Outbox(tmp_path / "outbox.db")
    pipe = Pipeline(outbox, metrics=ProcmonMetrics(CollectorRegistry()))
    tracer = _IdleTracer()
    loop = TracerLoop(tracer, pipe, None, hold_s=0, gap_s=0)  # type: ignore[arg-type]
    for _ in range(6):
        loop.step()
    assert IDLE_POLL_MS == 500
    assert tracer.timeouts == [50, 100, 200, 400, 500, 500]
    tracer.reads.append(_runs(1))
    loop.step()
    loop.step()
    assert tracer.timeouts[-2:] == [500, 50] and _pids(outbox) == [1000]
    pipe.close()
    outbox.close()
