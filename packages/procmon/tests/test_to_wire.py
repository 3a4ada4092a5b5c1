"""The hot-path encoding of a run (to_wire.process_run_encoded) against the pydantic model:
the JSON it writes must validate as a ProcessRun and dump exactly as the model path's
event does; values outside its checks fall back (None) to the model path."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from watcher_common.identity import DEFAULT, Workspace
from watcher_common.outbox import Outbox, prepare_event
from watcher_common.wire import (
    MAX_ARGV_ITEMS,
    MAX_INLINE_CONTENT,
    FileSnapshot,
    ProcessRun,
    dump_event,
    parse_event,
)
from watcher_procmon.agent import Pipeline
from watcher_procmon.classify import classify
from watcher_procmon.events import ExecEvent, ExitEvent
from watcher_procmon.records import ProcessRecord
from watcher_procmon.sources import SourceRead
from watcher_procmon.to_wire import (
    Origin,
    process_run,
    process_run_encoded,
    snapshot,
    snapshot_encoded,
    snapshot_target,
)

WS = Workspace("os", "1", "202012345")
T0 = datetime(2026, 11, 26, 20, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2026, 11, 26, 20, 0, 1, tzinfo=UTC)  # no fraction: "...:01Z"


def _exec(argv: tuple[str, ...], exe: str, cwd: str = "/home/coder/project/hw1") -> ExecEvent:
    return ExecEvent(
        ts_ns=1_000,
        tgid=4242,
        ns_tgid=7,
        ppid=4200,
        uid=1000,
        gid=1000,
        flags=0,
        cgroup_id=1 << 40,
        fork_ns=900,
        pidns=4026531836,
        mntns=4026531841,
        nodename="jcode-os-1-202012345-abc12-xyz9",
        filename=exe,
        argv=argv,
        argv_truncated=False,
        argv_len=sum(len(a.encode("utf-8", "surrogateescape")) + 1 for a in argv),
        exe=exe,
        cwd=cwd,
    )


def _record(ev: ExecEvent, status: int | None, end: datetime | None = T1) -> ProcessRecord:
    exit_ev = (
        None
        if status is None
        else ExitEvent(ts_ns=2_000, tgid=ev.tgid, status=status, last_tid=ev.tgid)
    )
    return ProcessRecord(
        exec=ev, exit=exit_ev, start=T0, end=end, end_ns=None if end is None else 2_000
    )


def _dump(model: ProcessRun, event_id: str) -> object:
    """The model path's JSON (as the outbox stores it), with the encoded event's id."""
    return json.loads(
        model.model_copy(update={"event_id": event_id}).model_dump_json(exclude_none=True)
    )


CASES = {
    "exit 0": (("./a.out",), "/home/coder/project/hw1/a.out", 0, None),
    "exit 42": (("./prog", "x y", "--flag=ü"), "/home/coder/project/hw1/prog", 42 << 8, None),
    "segfault + core": (("./crash",), "/home/coder/project/hw1/crash", 11 | 0x80, None),
    "killed": (("sleep", "100"), "/usr/bin/sleep", 9, None),
    "replaced by exec": (("sh", "-c", "exec ./a"), "/usr/bin/dash", None, None),
    "still running": (("./srv",), "/home/coder/project/hw1/srv", None, "no end"),
    "quotes and controls": (('a"b', "c\\d", "tab\there\n", "\x01"), "/bin/echo", 0, None),
    "mismatch": (("ls",), "/usr/bin/ls", 0, "path"),
    "linker with -o": (("ld", "-o", "out", "x.o"), "/usr/bin/ld", 0, None),
    "gcc linking objects": (("gcc", "-o", "bin/app", "a.o"), "/usr/bin/gcc", 1 << 8, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_encoded_run_is_the_models_dump(case: str) -> None:
    argv, exe, status, extra = CASES[case]
    ev = _exec(argv, exe)
    rec = _record(ev, status, None if extra == "no end" else T1)
    cls = classify(ev.exe, ev.argv, ev.filename)
    mismatch = extra == "path"
    org = Origin(WS, None if case == "killed" else "hw1", mismatch, "path" if mismatch else None)
    enc = process_run_encoded(rec, cls, org, "node-1", "1.2.3")
    assert enc is not None and enc.kind == "process.run"
    model = process_run(rec, cls, org, [], None, "node-1", "1.2.3")
    got = json.loads(enc.body)
    want = json.loads(
        model.model_copy(update={"event_id": enc.event_id}).model_dump_json(exclude_none=True)
    )
    assert got == want
    parsed = parse_event(got)
    assert isinstance(parsed, ProcessRun) and dump_event(parsed) == want
    assert parsed.start == T0 and parsed.end == rec.end


SHA = "ab" * 32
SOURCES = {
    "hashed, below the assignment": [SourceRead("/home/coder/project/hw1/a.c", "ok", SHA, 12)],
    "multi-file, one missing": [
        SourceRead("/home/coder/project/hw1/a.c", "ok", SHA, 0),
        SourceRead('/home/coder/project/hw1/sub/b c"q".cpp', "binary", "cd" * 32, 7),
        SourceRead("/home/coder/project/hw1/gone.c", "missing"),
    ],
    "other assignment and outside the workspace": [
        SourceRead("/home/coder/project/hw2/x.c", "ok", SHA, 3),
        SourceRead("/tmp/t.c", "too_large", None, 5 << 20),
    ],
}


@pytest.mark.parametrize("case", list(SOURCES))
def test_encoded_compile_with_sources_is_the_models_dump(case: str) -> None:
    ev = _exec(("gcc", "-c", "a.c"), "/usr/bin/gcc")
    rec = _record(ev, 0)
    cls = classify(ev.exe, ev.argv, ev.filename)
    org = Origin(WS, "hw1", False)
    reads = SOURCES[case]
    enc = process_run_encoded(rec, cls, org, "node-1", "1.2.3", reads)
    assert enc is not None
    model = process_run(rec, cls, org, reads, None, "node-1", "1.2.3")
    got = json.loads(enc.body)
    assert got == _dump(model, enc.event_id)
    assert len(got["source_files"]) == len(reads)
    parsed = parse_event(got)
    assert isinstance(parsed, ProcessRun) and dump_event(parsed) == _dump(model, enc.event_id)


def test_sources_outside_the_checks_take_the_model_path() -> None:
    ev = _exec(("gcc", "-c", "a.c"), "/usr/bin/gcc")
    cls = classify(ev.exe, ev.argv, ev.filename)
    org = Origin(WS, "hw1", False)
    for bad in (
        SourceRead("/tmp/" + "y" * 5000, "ok", SHA, 1),  # path over 4096 characters
        SourceRead("/tmp/a.c", "ok", "XY" * 32, 1),  # not a sha256 the model accepts
        SourceRead("/tmp/\udcff.c", "ok", SHA, 1),  # undecodable byte
    ):
        assert process_run_encoded(_record(ev, 0), cls, org, "n", "1", [bad]) is None


def test_values_outside_the_checks_take_the_model_path() -> None:
    ev = _exec(("./a.out",), "/x/" + "y" * 5000)  # exe over 4096 characters
    rec = _record(ev, 0)
    cls = classify(ev.exe, ev.argv, ev.filename)
    assert process_run_encoded(rec, cls, Origin(WS, "hw1", False), "n", "1") is None
    ev = _exec(("./a.out", "\udcff"), "/home/coder/project/hw1/a.out")  # undecodable byte
    cls = classify(ev.exe, ev.argv, ev.filename)
    assert process_run_encoded(_record(ev, 0), cls, Origin(WS, "hw1", False), "n", "1") is None


def test_long_argv_is_cut_and_flagged_as_the_model_does() -> None:
    argv = tuple(f"a{i}" for i in range(MAX_ARGV_ITEMS + 3))
    ev = _exec(argv, "/usr/bin/echo")
    rec = _record(ev, 0)
    cls = classify(ev.exe, ev.argv, ev.filename)
    org = Origin(WS, "hw1", False)
    enc = process_run_encoded(rec, cls, org, "n", "1")
    assert enc is not None
    got = json.loads(enc.body)
    assert len(got["argv"]) == MAX_ARGV_ITEMS and got["argv_truncated"] is True
    model = process_run(rec, cls, org, [], None, "n", "1")
    assert got == json.loads(
        model.model_copy(update={"event_id": enc.event_id}).model_dump_json(exclude_none=True)
    )


def test_pipeline_stores_encoded_runs_that_validate(tmp_path: Path) -> None:
    """Through the pipeline into a real outbox: every stored body is a valid ProcessRun
    with the record's values (the outbox takes the encoded path, a list sink the model)."""
    box = Outbox(tmp_path / "outbox.db")
    try:
        pipe = Pipeline(box, node="n")
        events: list[ExecEvent | ExitEvent] = []
        for i in range(5):
            ev = replace(_exec(("./a.out", str(i)), "/home/coder/project/hw1/a.out"), tgid=100 + i)
            events += [ev, ExitEvent(ts_ns=100 + i, tgid=100 + i, status=i << 8, last_tid=100 + i)]
        pipe.feed_many(events)
        assert pipe.runs == 5
        queued = box.next_batch(100, 1 << 20)
        runs = [parse_event(json.loads(q.body)) for q in queued]
        assert all(isinstance(r, ProcessRun) for r in runs)
        assert sorted(
            (r.pid, r.exit_code, r.argv[1]) for r in runs if isinstance(r, ProcessRun)
        ) == [(100 + i, i, str(i)) for i in range(5)]
        assert {q.event_id for q in queued} == {r.event_id for r in runs}
    finally:
        box.close()


def _read(path: str, data: bytes, mtime_ns: int | None) -> SourceRead:
    return SourceRead(path, "ok", hashlib.sha256(data).hexdigest(), len(data), data, mtime_ns)


HW1 = "/home/coder/project/hw1"
SNAPSHOTS = {
    "plain": (f"{HW1}/main.c", b"int main(void) { return 0; }\n", 1_700_000_000_123_456_789),
    "no mtime": (f"{HW1}/a.c", b"x", None),
    "whole-second mtime": (f"{HW1}/a.c", b"x", 1_700_000_000_000_000_000),
    "quotes, unicode, nested": (f'{HW1}/sub/"é\\x".py', "print('ü')\n".encode(), 5),
    "empty file": (f"{HW1}/empty.c", b"", 1),
    "at the inline cap": (f"{HW1}/big.c", b"a" * MAX_INLINE_CONTENT, 1),
}


@pytest.mark.parametrize("case", list(SNAPSHOTS))
def test_encoded_snapshot_is_what_the_outbox_stores_for_the_model(case: str) -> None:
    path, data, mtime_ns = SNAPSHOTS[case]
    read = _read(path, data, mtime_ns)
    org = Origin(WS, "hw1", False)
    target = snapshot_target(read, org, DEFAULT)
    assert target is not None
    enc = snapshot_encoded(read, org, target, T0, "node-1", "1.2.3")
    assert enc is not None and enc.kind == "file.snapshot"
    model = snapshot(read, org, T0, "node-1", "1.2.3", DEFAULT)
    assert model is not None
    stored, blob = prepare_event(model.model_copy(update={"event_id": enc.event_id}), data)
    assert blob is None
    got = json.loads(enc.body)
    assert got == json.loads(stored.model_dump_json(exclude_none=True))
    parsed = parse_event(got)
    assert isinstance(parsed, FileSnapshot) and base64.b64decode(parsed.content_b64 or "") == data


def test_snapshots_outside_the_checks_take_the_model_path() -> None:
    org = Origin(WS, "hw1", False)
    big = _read("/home/coder/project/hw1/big.c", b"a" * (MAX_INLINE_CONTENT + 1), 1)
    weird = _read("/home/coder/project/hw1/\udcff.c", b"x", 1)  # undecodable byte
    for read in (big, weird, replace(big, content=None), replace(weird, size=5)):
        target = snapshot_target(read, org, DEFAULT)
        assert target is not None
        assert snapshot_encoded(read, org, target, T0, "n", "1") is None, read.path
    dotted = _read("/home/coder/project/hw1/x.c", b"x", 1)
    target = snapshot_target(dotted, org, DEFAULT)
    assert target is not None
    assert snapshot_encoded(dotted, org, replace(target, path="a/../b"), T0, "n", "1") is None
    binary = SourceRead("/home/coder/project/hw1/a.out", "binary", "ab" * 32, 3)
    assert snapshot_target(binary, org, DEFAULT) is None
