"""Capture-on-exec: read the source files a compiler or interpreter was given, as the process
itself sees them, while it is still running.

Files are opened through ``/proc/<pid>/root`` with ``openat2(RESOLVE_IN_ROOT |
RESOLVE_NO_MAGICLINKS)``: the container's "/" is the root of the lookup, so an absolute
symlink or ``..`` in a student's tree resolves inside the container and can never reach the
node's files. The ``/proc/<pid>`` directory is opened first and the process's start time
checked against the exec record, so a recycled pid is never read.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass
from typing import Literal

MAX_SOURCE_BYTES = 1 << 20  # larger files: size only, no hash, no snapshot
BINARY_PROBE = 8192  # a NUL in the first bytes: binary (hashed, not snapshotted)

_SYS_OPENAT2 = 437  # the same number on every architecture (asm-generic unified table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

Status = Literal["ok", "binary", "too_large", "gone", "missing", "not_regular", "error"]


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


def container_path(cwd: str, arg: str) -> str | None:
    """An argv path -> absolute container path (None when the cwd is unknown)."""
    if arg.startswith("/"):
        return posixpath.normpath(arg)
    if not cwd:
        return None
    return posixpath.normpath(posixpath.join(cwd, arg))


def _openat2(dirfd: int, path: str) -> int:
    how = _OpenHow(
        flags=os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
        mode=0,
        resolve=_RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS,
    )
    fd = int(
        _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dirfd),
            os.fsencode(path),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _start_ticks(stat_text: str) -> int:
    # comm (field 2) may hold spaces and parentheses: split after the last ")"
    return int(stat_text.rsplit(")", 1)[1].split()[19])


class ProcessRoot:
    """The root directory of one running process (a context manager; closes its fds)."""

    def __init__(self, root_fd: int) -> None:
        self._fd = root_fd

    @classmethod
    def open(cls, pid: int, fork_ns: int, proc: str = "/proc") -> ProcessRoot | None:
        """None when the process is gone (or the pid now belongs to another process)."""
        try:
            pid_fd = os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            stat_fd = os.open("stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=pid_fd)
            try:
                text = os.read(stat_fd, 4096).decode("ascii", "replace")
            finally:
                os.close(stat_fd)
            # /proc reports start_boottime in clock ticks: the exec record's fork time must
            # fall in the same tick, else this is a recycled pid
            if _start_ticks(text) != fork_ns * _CLK_TCK // 1_000_000_000:
                return None
            flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            return cls(os.open("root", flags, dir_fd=pid_fd))
        except (OSError, ValueError, IndexError):
            return None
        finally:
            os.close(pid_fd)

    def read(self, path: str, max_bytes: int = MAX_SOURCE_BYTES) -> SourceRead:
        """Hash (and keep, if small and text) one file given as an absolute container path."""
        try:
            fd = _openat2(self._fd, path.lstrip("/") or ".")
        except OSError as exc:
            gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)
            return SourceRead(path, "missing" if gone else "error")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return SourceRead(path, "not_regular")
            if st.st_size > max_bytes:
                return SourceRead(path, "too_large", size=st.st_size, mtime_ns=st.st_mtime_ns)
            chunks: list[bytes] = []
            left = max_bytes + 1  # one more byte tells a file that grew past the cap
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
        if b"\0" in data[:BINARY_PROBE]:
            return SourceRead(path, "binary", sha, len(data), mtime_ns=st.st_mtime_ns)
        return SourceRead(path, "ok", sha, len(data), data, st.st_mtime_ns)

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
    """Every source named in argv, in argv order; status "gone" for all when the process
    has already exited (the run still lists the paths, without hashes)."""
    paths = [p for a in args if (p := container_path(cwd, a)) is not None]
    if not paths:
        return []
    root = ProcessRoot.open(pid, fork_ns, proc)
    if root is None:
        return [SourceRead(p, "gone") for p in paths]
    with root:
        return [root.read(p) for p in paths]
