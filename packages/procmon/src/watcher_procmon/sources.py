"""Capture-on-exec: read the source files a compiler or interpreter was given, as the process
itself sees them, while it is still running.

Files are opened through ``/proc/<pid>/root`` with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS)``: the container's "/" is the root of the lookup, so an absolute
symlink or ``..`` in a student's tree resolves inside the container and can never reach the
node's files. The ``/proc/<pid>`` directory is opened first and the process's start time
checked against the exec record, so a recycled pid is never read.

A fast ``gcc -c`` may exit before its exec reaches us. Its files are then read through
another live process of the same mount namespace (same container, same view of the
files): its parent (usually the student's shell), else a peer known from exec records.
Such a stand-in must be in the exec's mount namespace (``/proc/<pid>/ns/mnt``) and, for
the parent, have started no later than the child was forked (else the pid was recycled).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import posixpath
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, TypeVar

MAX_SOURCE_BYTES = 1 << 20  # larger files: size only, no hash, no snapshot
BINARY_PROBE = 8192  # a NUL in the first bytes: binary (hashed, not snapshotted)

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic unified table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)

_H = TypeVar("_H")  # what an opener of /proc/<pid> hands back
Status = Literal["ok", "binary", "too_large", "gone", "missing", "not_regular", "error"]
Via = Literal["self", "parent", "peer", "missing"]  # whose /proc/<pid>/root was read
VIAS: tuple[Via, ...] = ("self", "parent", "peer", "missing")


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


@dataclass(frozen=True, slots=True)
class SourceRead:
    path: str  # absolute, as seen inside the container (lexically normalised)
    status: Status
    sha256: str | None = None
    size: int | None = None
    content: bytes | None = None  # set for "ok" only: what to snapshot
    mtime_ns: int | None = None


# A pure function of two strings, asked for each source of each compile (the agent's
# attribution, the capture, the run's source_files): memoised.
@functools.lru_cache(maxsize=4096)
def container_path(cwd: str, arg: str) -> str | None:
    """An argv path -> absolute container path (None when the cwd is unknown)."""
    if arg.startswith("/"):
        return posixpath.normpath(arg)
    if not cwd:
        return None
    return posixpath.normpath(posixpath.join(cwd, arg))


# One open_how for every call (never written): built and converted once, not per file.
_HOW = _OpenHow(
    flags=os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
    mode=0,
    resolve=_RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS,
)
_HOW_ADDR = ctypes.addressof(_HOW)
_HOW_SIZE = ctypes.sizeof(_HOW)
_openat2_call = ctypes.CFUNCTYPE(
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_void_p,
    ctypes.c_size_t,
    use_errno=True,
)(("syscall", _libc))


def _openat2(dirfd: int, path: str) -> int:
    fd: int = _openat2_call(_SYS_OPENAT2, dirfd, os.fsencode(path), _HOW_ADDR, _HOW_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_ticks(stat_text: bytes) -> int:
    # comm (field 2) may hold spaces and parentheses: split after the last ")"
    return int(stat_text.rsplit(b")", 1)[1].split()[19])


def _ticks(ns: int) -> int:
    return ns * _CLK_TCK // 1_000_000_000


def _start_ok(start: int, fork_ns: int | None, born_by_ns: int | None) -> bool:
    """/proc reports start_boottime in clock ticks: the exec record's fork time must fall
    in the same tick (else this is a recycled pid), and a stand-in must have started no
    later than ``born_by_ns``."""
    return (fork_ns is None or start == _ticks(fork_ns)) and (
        born_by_ns is None or start <= _ticks(born_by_ns)
    )


def open_pid(
    pid: int,
    proc: str = "/proc",
    *,
    fork_ns: int | None = None,
    born_by_ns: int | None = None,
    mntns: int = 0,
) -> tuple[int, int] | None:
    """``/proc/<pid>`` as a directory fd and the process's start time in clock ticks, or
    None when it is gone or fails a check: ``fork_ns`` (the exact start, from its exec
    record), ``born_by_ns`` (it must have started no later: a parent is older than its
    child, a recycled pid is not), ``mntns`` (its mount namespace inode; 0 = unchecked).
    The fd stays valid for this process only: a later recycled pid is a new directory."""
    try:
        pid_fd = os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat_fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=pid_fd)
        try:
            text = os.read(stat_fd, 4096)
        finally:
            os.close(stat_fd)
        start = _start_ticks(text)
        ok = _start_ok(start, fork_ns, born_by_ns)
        # st_ino of the ns link is the namespace's inode (what BPF records as mntns)
        if ok and mntns and os.stat("ns/mnt", dir_fd=pid_fd).st_ino != mntns:
            ok = False
    except (OSError, ValueError, IndexError):
        ok = False
    if not ok:
        os.close(pid_fd)
        return None
    return pid_fd, start


def open_root(
    pid: int,
    proc: str = "/proc",
    *,
    fork_ns: int | None = None,
    born_by_ns: int | None = None,
    mntns: int = 0,
) -> int | None:
    """The root directory of ``pid`` (an ``O_PATH`` fd), with :func:`open_pid`'s checks, in
    fewer syscalls (this runs for every compile): the root is opened *first* and the process
    checked after. A check that passes names a process that is alive now and started before
    the exec that brought us here, so it held the pid all along, when the root was opened
    too: a recycled pid is never read. None when the process is gone or fails a check."""
    base = f"{proc}/{pid}/"
    try:
        root = os.open(base + "root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        # the ns link reads "mnt:[<inode>]", the namespace's inode (what BPF records as
        # mntns): half the cost of a stat through it
        ok = not mntns or os.readlink(base + "ns/mnt") == f"mnt:[{mntns}]"
        if ok:
            stat_fd = os.open(base + "stat", os.O_RDONLY | os.O_CLOEXEC)
            try:
                text = os.read(stat_fd, 4096)
            finally:
                os.close(stat_fd)
            ok = _start_ok(_start_ticks(text), fork_ns, born_by_ns)
    except (OSError, ValueError, IndexError):
        ok = False
    if not ok:
        os.close(root)
        return None
    return root


def read_source(root_fd: int, path: str, max_bytes: int = MAX_SOURCE_BYTES) -> SourceRead:
    """Hash (and keep, if small and text) one file given as an absolute container path,
    resolved inside the root ``root_fd``."""
    try:
        fd = _openat2(root_fd, path.lstrip("/") or ".")
    except OSError as exc:
        gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
        return SourceRead(path, "missing" if gone else "error")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return SourceRead(path, "not_regular")
        size = st.st_size
        if size > max_bytes:
            return SourceRead(path, "too_large", size=size, mtime_ns=st.st_mtime_ns)
        # one read for a file that is as fstat said (a regular file reads short only at
        # its end); one that changed meanwhile is read on to its end, up to one byte
        # past the cap (which tells a file that grew past it)
        data = os.read(fd, size + 1)
        if len(data) != size:
            chunks = [data]
            left = max_bytes + 1 - len(data)
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
                chunks.append(chunk)
                left -= len(chunk)
            data = b"".join(chunks)
    except OSError:
        return SourceRead(path, "error")
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        return SourceRead(path, "too_large", size=len(data), mtime_ns=st.st_mtime_ns)
    sha = hashlib.sha256(data).hexdigest()
    if data.find(b"\0", 0, BINARY_PROBE) >= 0:
        return SourceRead(path, "binary", sha, len(data), mtime_ns=st.st_mtime_ns)
    return SourceRead(path, "ok", sha, len(data), data, st.st_mtime_ns)


class ProcessRoot:
    """The root directory of one running process (a context manager; closes its fds)."""

    def __init__(self, root_fd: int) -> None:
        self._fd = root_fd

    @classmethod
    def open(
        cls, pid: int, fork_ns: int, proc: str = "/proc", *, mntns: int = 0
    ) -> ProcessRoot | None:
        """None when the process is gone (or the pid now belongs to another process)."""
        root = open_root(pid, proc, fork_ns=fork_ns, mntns=mntns)
        return None if root is None else cls(root)

    @classmethod
    def _from_pid_fd(cls, pid_fd: int) -> ProcessRoot | None:
        """Takes ownership of ``pid_fd`` (closed here)."""
        try:
            return cls(os.open("root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pid_fd))
        except OSError:
            return None
        finally:
            os.close(pid_fd)

    def read(self, path: str, max_bytes: int = MAX_SOURCE_BYTES) -> SourceRead:
        """Hash (and keep, if small and text) one file given as an absolute container path."""
        return read_source(self._fd, path, max_bytes)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ProcessRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_sources(
    pid: int, fork_ns: int, cwd: str, args: tuple[str, ...], proc: str = "/proc"
) -> list[SourceRead]:
    """Every source named in argv, in argv order, read through the process itself only."""
    return capture_sources(pid, fork_ns, cwd, args, proc=proc)[0]


@dataclass(frozen=True, slots=True)
class StandIn:
    """A process whose ``/proc/<pid>`` may be read for an exec's (see :func:`stand_in`)."""

    pid: int
    pid_fd: int  # the caller closes it
    start_ticks: int
    via: Via


def _first_stand_in(
    open_: Callable[..., _H | None],
    pid: int,
    fork_ns: int,
    ppid: int,
    mntns: int,
    peers: Iterable[tuple[int, int]],
) -> tuple[int, _H, Via] | None:
    """The first of ``pid``, its parent, its namespace's peers that ``open_`` (:func:`open_pid`
    or :func:`open_root`, with their checks) opens; the parent and peers only when the
    mount namespace is known: without it there is no telling a stand-in's view is the same."""
    if (got := open_(pid, fork_ns=fork_ns, mntns=mntns)) is not None:
        return pid, got, "self"
    if not mntns:
        return None
    if ppid > 1 and (got := open_(ppid, born_by_ns=fork_ns, mntns=mntns)) is not None:
        return ppid, got, "parent"
    for peer, peer_fork in peers:
        if (
            peer not in (pid, ppid)
            and (got := open_(peer, fork_ns=peer_fork, mntns=mntns)) is not None
        ):
            return peer, got, "peer"
    return None


def stand_in(
    pid: int,
    fork_ns: int,
    *,
    ppid: int = 0,
    mntns: int = 0,
    peers: Iterable[tuple[int, int]] = (),
    proc: str = "/proc",
) -> StandIn | None:
    """The first live process that sees what ``pid`` saw: itself, else (only when its mount
    namespace is known) its parent, else a peer ``(pid, fork_ns)`` of that namespace."""
    found = _first_stand_in(
        functools.partial(open_pid, proc=proc), pid, fork_ns, ppid, mntns, peers
    )
    if found is None:
        return None
    who, (pid_fd, start), via = found
    return StandIn(who, pid_fd, start, via)


def capture_sources(
    pid: int,
    fork_ns: int,
    cwd: str,
    args: tuple[str, ...],
    *,
    ppid: int = 0,
    mntns: int = 0,
    peers: Iterable[tuple[int, int]] = (),
    proc: str = "/proc",
    anchor: tuple[int, int] | None = None,
) -> tuple[list[SourceRead], Via]:
    """Every source named in argv, in argv order, and whose root they were read through;
    status "gone" for all (via "missing") when no process of the container could be used
    (the run still lists the paths, without hashes). ``anchor``: ``(pid, root fd)`` of a
    live process of the same mount namespace (the caller's cache, left open), read through
    before any ``/proc/<pid>/root`` is opened; ``via`` then names it relative to ``pid``."""
    paths = [p for a in args if (p := container_path(cwd, a)) is not None]
    if not paths:
        return [], "missing"
    if anchor is not None and mntns:
        who, root_fd = anchor
        via: Via = "self" if who == pid else "parent" if who == ppid else "peer"
        return [read_source(root_fd, p) for p in paths], via
    # the stand-ins of stand_in(), each opened as open_root() does (fewer syscalls)
    found = _first_stand_in(
        functools.partial(open_root, proc=proc), pid, fork_ns, ppid, mntns, peers
    )
    if found is None:
        return [SourceRead(p, "gone") for p in paths], "missing"
    _, root, via = found
    try:
        return [read_source(root, p) for p in paths], via
    finally:
        os.close(root)
