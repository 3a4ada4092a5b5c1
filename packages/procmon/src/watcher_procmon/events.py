"""Decoding of the ring buffer records defined in ``bpf/procmon_event.h``.

The ctypes structures below mirror the header field by field (tests/test_layout.py
compiles the header with gcc and compares every size and offset); the dataclasses are
what the rest of the agent sees.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

ABI_VERSION = 4

NODENAME_LEN = 72
PREFIX_MAX = 64
ARGV_MAX = 65536
PATH_MAX = 4096
NAME_MAX = 256
MAX_DEPTH = 64
TOOL_NAME_LEN = 32
STDERR_CHUNK = 4096
STDERR_BUDGET = 16384

EV_EXEC = 1
EV_EXIT = 2
EV_STDERR = 3

TOOL_NONE = 0
TOOL_COMPILER = 1
TOOL_INTERPRETER = 2

F_ARGV_TRUNC = 1 << 0
F_ARGV_ERR = 1 << 1
F_FILENAME_TRUNC = 1 << 2
F_EXE_TRUNC = 1 << 3
F_EXE_UNREACH = 1 << 4
F_CWD_TRUNC = 1 << 5
F_CWD_UNREACH = 1 << 6
F_NOT_TRACKED = 1 << 7
F_CAPTURE = 1 << 8
F_TOOL = 1 << 9
F_CAPTURE_FULL = 1 << 10

_u16, _u32, _u64 = ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class PmHdr(ctypes.Structure):
    _fields_ = (("type", _u16), ("version", _u16), ("size", _u32), ("ts_ns", _u64))


class PmExec(ctypes.Structure):
    _fields_ = (
        ("hdr", PmHdr),
        ("tgid", _u32),
        ("ns_tgid", _u32),
        ("ppid", _u32),
        ("uid", _u32),
        ("gid", _u32),
        ("flags", _u32),
        ("cgroup_id", _u64),
        ("fork_ns", _u64),
        ("pidns_ino", _u32),
        ("mntns_ino", _u32),
        ("argv_len", _u32),
        ("argv_orig_len", _u32),
        ("filename_len", _u16),
        ("exe_len", _u16),
        ("cwd_len", _u16),
        ("_pad0", _u16),
        ("build_tgid", _u32),
        ("_pad1", _u32),
        ("nodename", ctypes.c_char * NODENAME_LEN),
    )


class PmExit(ctypes.Structure):
    _fields_ = (
        ("hdr", PmHdr),
        ("tgid", _u32),
        ("status", _u32),
        ("last_tid", _u32),
        ("flags", _u32),
    )


class PmStderr(ctypes.Structure):
    _fields_ = (
        ("hdr", PmHdr),
        ("tgid", _u32),
        ("build_tgid", _u32),
        ("len", _u32),
        ("orig_len", _u32),
    )


class PmConfig(ctypes.Structure):
    _fields_ = (
        ("prefix_len", _u32),
        ("enabled", _u32),
        ("wakeup_every", _u32),
        ("wakeup_bytes", _u32),
        ("capture_stderr", _u32),
        ("stderr_budget", _u32),
        ("tool_bloom", _u64),
        ("prefix", ctypes.c_char * PREFIX_MAX),
    )


def tool_bloom_bit(name: bytes) -> int:
    """PM_TOOL_BLOOM_BIT of procmon_event.h for an exe basename (without NUL)."""
    return (name[0] * 7 + name[-1] * 3 + len(name)) & 63


class PmCounters(ctypes.Structure):
    _fields_ = (
        ("exec_seen", _u64),
        ("exec_emitted", _u64),
        ("exec_filtered", _u64),
        ("exit_seen", _u64),
        ("exit_emitted", _u64),
        ("exit_filtered", _u64),
        ("stderr_emitted", _u64),
        ("wakeups", _u64),
        ("exec_drop_ringbuf", _u64),
        ("exec_drop_scratch", _u64),
        ("exit_drop_ringbuf", _u64),
        ("exec_read_err", _u64),
        ("exec_not_tracked", _u64),
        ("stderr_seen", _u64),
        ("stderr_drop_budget", _u64),
        ("stderr_drop_ringbuf", _u64),
        ("stderr_read_err", _u64),
        ("capture_full", _u64),
        ("exec_folded", _u64),
        ("exit_folded", _u64),
    )


class DecodeError(ValueError):
    """A record does not match the layout (a kernel/user ABI mismatch or a bug)."""


# Not frozen (never mutated, though): a frozen __init__ sets each field through
# object.__setattr__, ~4 us more per record at hundreds of records a second.
@dataclass(slots=True)
class ExecEvent:
    ts_ns: int  # CLOCK_BOOTTIME
    tgid: int
    ns_tgid: int
    ppid: int
    uid: int
    gid: int
    flags: int
    cgroup_id: int
    fork_ns: int
    pidns: int
    mntns: int
    nodename: str
    filename: str
    argv: tuple[str, ...]
    argv_truncated: bool
    argv_len: int  # original bytes of argv (NUL separators included)
    exe: str  # path inside the container ("" when unknown)
    cwd: str  # path inside the container ("" when unknown)
    build_tgid: int = 0  # F_CAPTURE: the compiler driver whose build this process is part of

    def flag(self, bit: int) -> bool:
        return bool(self.flags & bit)


# not frozen: see ExecEvent
@dataclass(slots=True)
class ExitEvent:
    ts_ns: int  # CLOCK_BOOTTIME
    tgid: int
    status: int  # wait status
    last_tid: int

    @property
    def exit_code(self) -> int | None:
        """The exit code (WEXITSTATUS) when the process exited, None when killed."""
        return (self.status >> 8) & 0xFF if self.status & 0x7F == 0 else None

    @property
    def signal(self) -> int | None:
        """The terminating signal (WTERMSIG), None when it exited normally."""
        return self.status & 0x7F if self.status & 0x7F else None

    @property
    def core_dumped(self) -> bool:
        return bool(self.status & 0x7F) and bool(self.status & 0x80)


# not frozen: see ExecEvent
@dataclass(slots=True)
class StderrEvent:
    """Bytes a compiler (or one of its children) wrote to fd 2."""

    ts_ns: int  # CLOCK_BOOTTIME
    tgid: int
    build_tgid: int
    data: bytes
    orig_len: int  # the write()'s count: > len(data) when cut

    @property
    def truncated(self) -> bool:
        return self.orig_len > len(self.data)


Event = ExecEvent | ExitEvent | StderrEvent


def _text(raw: bytes) -> str:
    # Paths and args are bytes on Linux; keep undecodable bytes round-trippable.
    return raw.decode("utf-8", "surrogateescape")


# struct formats derived from the ctypes layouts above (themselves checked against the
# header): one unpack_from per record instead of a ctypes copy + one attribute read per
# field (~40 % of the decoding time)
_CODES: dict[type, str] = {_u16: "H", _u32: "I", _u64: "Q"}


def _flat(cls: type[ctypes.Structure], base: int = 0) -> list[tuple[int, str, str]]:
    out: list[tuple[int, str, str]] = []
    for name, typ in cls._fields_:  # type: ignore[misc]
        off = base + getattr(cls, name).offset
        if isinstance(typ, type) and issubclass(typ, ctypes.Structure):
            out += _flat(typ, off)
        elif isinstance(typ, type) and issubclass(typ, ctypes.Array):
            out.append((off, name, f"{ctypes.sizeof(typ)}s"))  # c_char arrays only
        else:
            out.append((off, name, _CODES[typ]))
    return out


def layout_struct(cls: type[ctypes.Structure]) -> tuple[struct.Struct, tuple[str, ...]]:
    """A little-endian ``struct.Struct`` with the same offsets and size as ``cls`` (nested
    structures flattened, padding as ``x``), and the field names in unpack order."""
    fmt, pos, names = "<", 0, []
    for off, name, code in _flat(cls):
        fmt += "x" * (off - pos) + code
        pos = off + struct.calcsize("<" + code)
        names.append(name)
    fmt += "x" * (ctypes.sizeof(cls) - pos)
    st = struct.Struct(fmt)
    if st.size != ctypes.sizeof(cls):
        raise AssertionError(f"{cls.__name__}: struct size {st.size} != {ctypes.sizeof(cls)}")
    return st, tuple(names)


def _checked(cls: type[ctypes.Structure], names: tuple[str, ...]) -> struct.Struct:
    # the decoders below unpack by position: the names must be these, in this order
    st, got = layout_struct(cls)
    if got != names:
        raise AssertionError(f"{cls.__name__} fields {got} != decoder's {names}")
    return st


_HDR = _checked(PmHdr, ("type", "version", "size", "ts_ns"))
_TYPE_VERSION = struct.Struct("<HH")  # the header's first two fields
_EXEC = _checked(
    PmExec,
    (
        *("type", "version", "size", "ts_ns", "tgid", "ns_tgid", "ppid", "uid", "gid"),
        *("flags", "cgroup_id", "fork_ns", "pidns_ino", "mntns_ino", "argv_len"),
        *("argv_orig_len", "filename_len", "exe_len", "cwd_len", "_pad0", "build_tgid"),
        *("_pad1", "nodename"),
    ),
)
_EXIT = _checked(
    PmExit, ("type", "version", "size", "ts_ns", "tgid", "status", "last_tid", "flags")
)
_STDERR = _checked(
    PmStderr, ("type", "version", "size", "ts_ns", "tgid", "build_tgid", "len", "orig_len")
)


def _argv(raw: bytes) -> tuple[str, ...]:
    # The arg area is "a\0b\0c\0"; a truncated one ends inside an argument, which is kept.
    # Decoding before splitting is the same: NUL never joins a multi-byte sequence.
    if not raw:
        return ()
    if raw[-1] == 0:
        raw = raw[:-1]
    return tuple(raw.decode("utf-8", "surrogateescape").split("\0"))


def _path(raw: bytes, unreachable: bool) -> str:
    """Components leaf first, each NUL-ended -> "/a/b/c"; "" when the path is unknown."""
    parts = raw.decode("utf-8", "surrogateescape").split("\0")
    del parts[-1]
    if unreachable and not parts:
        return ""
    parts.reverse()
    return "/" + "/".join(parts)


def _exec(buf: bytes) -> ExecEvent:
    head = _EXEC.size
    if len(buf) < head:
        raise DecodeError(f"exec record of {len(buf)} bytes < {head}")
    (
        _t,
        _v,
        size,
        ts_ns,
        tgid,
        ns_tgid,
        ppid,
        uid,
        gid,
        flags,
        cgroup_id,
        fork_ns,
        pidns,
        mntns,
        a,
        orig_len,
        f,
        x,
        c,
        _p0,
        build_tgid,
        _p1,
        node,
    ) = _EXEC.unpack_from(buf)
    if head + a + f + x + c != size or size > len(buf):
        raise DecodeError(f"exec record size {size} (buffer {len(buf)}) != {head}+{a}+{f}+{x}+{c}")
    p = head + a
    fname_raw = buf[p : p + f]
    p += f
    exe_raw = buf[p : p + x]
    p += x
    return ExecEvent(
        ts_ns,
        tgid,
        ns_tgid,
        ppid,
        uid,
        gid,
        flags,
        cgroup_id,
        fork_ns,
        pidns,
        mntns,
        node.partition(b"\0")[0].decode("utf-8", "surrogateescape"),
        fname_raw.partition(b"\0")[0].decode("utf-8", "surrogateescape"),
        _argv(buf[head : head + a]),
        bool(flags & F_ARGV_TRUNC),
        orig_len,
        _path(exe_raw, bool(flags & F_EXE_UNREACH)),
        _path(buf[p : p + c], bool(flags & F_CWD_UNREACH)),
        build_tgid,
    )


def _exit(buf: bytes) -> ExitEvent:
    if len(buf) < _EXIT.size:
        raise DecodeError(f"exit record of {len(buf)} bytes < {_EXIT.size}")
    _t, _v, _s, ts_ns, tgid, status, last_tid, _f = _EXIT.unpack_from(buf)
    return ExitEvent(ts_ns, tgid, status, last_tid)


def _stderr(buf: bytes) -> StderrEvent:
    head = _STDERR.size
    if len(buf) < head:
        raise DecodeError(f"stderr record of {len(buf)} bytes < {head}")
    _t, _v, size, ts_ns, tgid, build_tgid, n, orig_len = _STDERR.unpack_from(buf)
    if size != head + n or size > len(buf):
        raise DecodeError(f"stderr record size {size} (buffer {len(buf)}) != {head}+{n}")
    return StderrEvent(ts_ns, tgid, build_tgid, buf[head : head + n], orig_len)


def decode(buf: bytes) -> Event:
    """One ring buffer record -> an event; raises DecodeError on a malformed record."""
    if len(buf) < _HDR.size:
        raise DecodeError(f"record of {len(buf)} bytes is shorter than its header")
    typ, version = _TYPE_VERSION.unpack_from(buf)
    if version != ABI_VERSION:
        raise DecodeError(f"record ABI version {version}, expected {ABI_VERSION}")
    if typ == EV_EXEC:
        return _exec(buf)
    if typ == EV_EXIT:
        return _exit(buf)
    if typ == EV_STDERR:
        return _stderr(buf)
    raise DecodeError(f"unknown record type {typ}")
