"""Record decoding and exec/exit pairing on synthetic records (no kernel needed)."""

from __future__ import annotations

import ctypes
import time
from datetime import UTC, datetime

import pytest

from watcher_procmon.events import (
    ABI_VERSION,
    EV_EXEC,
    EV_EXIT,
    F_ARGV_TRUNC,
    F_CWD_UNREACH,
    DecodeError,
    ExecEvent,
    ExitEvent,
    PmExec,
    PmExit,
    decode,
)
from watcher_procmon.records import BootClock, Pairer


def exec_record(
    *,
    tgid: int = 100,
    ts: int = 1_000,
    argv: bytes = b"gcc\0-o\0a b\0main.c\0",
    filename: bytes = b"/usr/bin/gcc\0",
    exe: bytes = b"gcc-12\0bin\0usr\0",
    cwd: bytes = b"hw1\0project\0coder\0home\0",
    flags: int = 0,
    orig_len: int | None = None,
) -> bytes:
    r = PmExec()
    r.hdr.type, r.hdr.version, r.hdr.ts_ns = EV_EXEC, ABI_VERSION, ts
    r.tgid, r.ns_tgid, r.ppid, r.flags = tgid, 7, 99, flags
    r.argv_len, r.argv_orig_len = len(argv), len(argv) if orig_len is None else orig_len
    r.filename_len, r.exe_len, r.cwd_len = len(filename), len(exe), len(cwd)
    r.nodename = b"jcode-os-1-202012345"
    payload = argv + filename + exe + cwd
    r.hdr.size = ctypes.sizeof(r) + len(payload)
    return bytes(r) + payload


def exit_record(*, tgid: int = 100, ts: int = 2_000, status: int = 0) -> bytes:
    r = PmExit()
    r.hdr.type, r.hdr.version, r.hdr.ts_ns, r.hdr.size = EV_EXIT, ABI_VERSION, ts, 32
    r.tgid, r.status, r.last_tid = tgid, status, tgid
    return bytes(r)


def test_exec_payload_decodes() -> None:
    ev = decode(exec_record())
    assert isinstance(ev, ExecEvent)
    assert ev.argv == ("gcc", "-o", "a b", "main.c")
    assert ev.filename == "/usr/bin/gcc"
    assert ev.exe == "/usr/bin/gcc-12"
    assert ev.cwd == "/home/coder/project/hw1"
    assert ev.nodename == "jcode-os-1-202012345"
    assert (ev.tgid, ev.ns_tgid, ev.ppid, ev.ts_ns) == (100, 7, 99, 1_000)


def test_empty_arguments_and_root_cwd() -> None:
    ev = decode(exec_record(argv=b"prog\0\0x\0", cwd=b""))
    assert isinstance(ev, ExecEvent)
    assert ev.argv == ("prog", "", "x") and ev.cwd == "/"


def test_unreachable_cwd_is_empty() -> None:
    ev = decode(exec_record(cwd=b"", flags=F_CWD_UNREACH))
    assert isinstance(ev, ExecEvent) and ev.cwd == ""


def test_truncated_argv_keeps_the_cut_argument() -> None:
    ev = decode(exec_record(argv=b"a\0bcd", flags=F_ARGV_TRUNC, orig_len=100_000))
    assert isinstance(ev, ExecEvent)
    assert ev.argv == ("a", "bcd") and ev.argv_truncated and ev.argv_len == 100_000


def test_undecodable_bytes_round_trip() -> None:
    ev = decode(exec_record(argv=b"cat\0\xff\xfe.c\0"))
    assert isinstance(ev, ExecEvent)
    assert ev.argv[1].encode("utf-8", "surrogateescape") == b"\xff\xfe.c"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:20],  # shorter than its struct
        lambda b: b[:-3],  # payload shorter than hdr.size says
        lambda b: b[:2] + b"\x09\x00" + b[4:],  # unknown ABI version
        lambda b: b"\x07\x00" + b[2:],  # unknown type
    ],
)
def test_malformed_records_raise(mangle: object) -> None:
    with pytest.raises(DecodeError):
        decode(mangle(exec_record()))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("status", "code", "sig", "core"),
    [
        (0, 0, None, False),
        (42 << 8, 42, None, False),
        (0x80 | 11, None, 11, True),  # SIGSEGV, core dumped
        (6, None, 6, False),  # SIGABRT
        (9, None, 9, False),  # SIGKILL
    ],
)
def test_wait_status_fields(status: int, code: int | None, sig: int | None, core: bool) -> None:
    ev = decode(exit_record(status=status))
    assert isinstance(ev, ExitEvent)
    assert (ev.exit_code, ev.signal, ev.core_dumped) == (code, sig, core)


def test_pairing_exec_exit_and_re_exec() -> None:
    p = Pairer()
    assert p.feed(decode(exec_record(tgid=5, ts=10))) is None
    replaced = p.feed(decode(exec_record(tgid=5, ts=20, argv=b"/bin/true\0")))
    assert replaced is not None and replaced.replaced_by_exec and replaced.exit is None
    assert replaced.end_ns == 20 and replaced.duration_s == pytest.approx(10e-9)
    done = p.feed(decode(exit_record(tgid=5, ts=50, status=3 << 8)))
    assert done is not None and done.exec.argv == ("/bin/true",) and done.exit_code == 3
    assert done.end_ns == 50 and not done.replaced_by_exec
    assert p.open == {}


def test_orphan_exit_and_flush() -> None:
    p = Pairer()
    assert p.feed(decode(exit_record(tgid=9))) is None and p.orphan_exits == 1
    p.feed(decode(exec_record(tgid=10)))
    (left,) = p.flush()
    assert left.exit is None and left.end is None and not left.replaced_by_exec


def test_boot_clock_converts_to_utc_now() -> None:
    clock = BootClock()
    now_boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    got = clock.to_utc(now_boot)
    assert got.tzinfo is UTC
    assert abs((got - datetime.now(UTC)).total_seconds()) < 0.05
