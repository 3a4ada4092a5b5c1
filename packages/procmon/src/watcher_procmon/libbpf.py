"""A thin typed ctypes binding of the few libbpf.so.1 calls procmon needs.

libbpf (Debian ``libbpf1``) does the ELF parsing, CO-RE relocation, map creation and
verification; this module only wraps pointers in small classes that free them once, and
turns libbpf's ``NULL``/``-errno`` returns into :class:`LibbpfError`. No bcc, no headers,
no compiler at run time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("watcher_procmon.libbpf")

LIBBPF_NAMES = ("libbpf.so.1",)


class LibbpfError(OSError):
    """A libbpf call failed; ``errno`` holds the (positive) error number."""

    def __init__(self, what: str, err: int) -> None:
        err = abs(err)
        super().__init__(err, f"{what}: {os.strerror(err)} (errno {err})")


def _load() -> ctypes.CDLL:
    last: OSError | None = None
    for name in LIBBPF_NAMES:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as exc:  # try the next name
            last = exc
    raise LibbpfError(f"cannot load libbpf ({', '.join(LIBBPF_NAMES)}): {last}", errno_mod.ENOENT)


_lib: ctypes.CDLL | None = None
_lib_lock = threading.Lock()

# ring_buffer_sample_fn: int (*)(void *ctx, void *data, size_t size)
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
# libbpf_print_fn_t: int (*)(enum libbpf_print_level, const char *fmt, va_list ap)
PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "bpf_object__open_file": (_P, [ctypes.c_char_p, _P]),
    "bpf_object__load": (ctypes.c_int, [_P]),
    "bpf_object__close": (None, [_P]),
    "bpf_object__find_program_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_object__find_map_by_name": (_P, [_P, ctypes.c_char_p]),
    "bpf_program__attach": (_P, [_P]),
    "bpf_program__fd": (ctypes.c_int, [_P]),
    "bpf_program__set_autoload": (ctypes.c_int, [_P, ctypes.c_bool]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_program__attach_perf_event": (_P, [_P, ctypes.c_int]),
    "bpf_link__destroy": (ctypes.c_int, [_P]),
    "bpf_map__fd": (ctypes.c_int, [_P]),
    "bpf_map__set_max_entries": (ctypes.c_int, [_P, ctypes.c_uint32]),
    "bpf_map__set_initial_value": (ctypes.c_int, [_P, _P, ctypes.c_size_t]),
    "bpf_map__value_size": (ctypes.c_uint32, [_P]),
    "bpf_map_lookup_elem": (ctypes.c_int, [ctypes.c_int, _P, _P]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, _P, _P, ctypes.c_uint64]),
    "ring_buffer__new": (_P, [ctypes.c_int, SAMPLE_FN, _P, _P]),
    "ring_buffer__poll": (ctypes.c_int, [_P, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [_P]),
    "ring_buffer__free": (None, [_P]),
    "libbpf_num_possible_cpus": (ctypes.c_int, []),
    "libbpf_set_print": (_P, [PRINT_FN]),
}


def lib() -> ctypes.CDLL:
    """libbpf.so.1 with argument/return types declared (loaded once)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            handle = _load()
            for name, (restype, argtypes) in _SIGNATURES.items():
                fn = getattr(handle, name)
                fn.restype = restype
                fn.argtypes = argtypes
            _lib = handle
            _install_print()
        return _lib


def _errno() -> int:
    return ctypes.get_errno() or errno_mod.EINVAL


def _check(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno from int-returning calls."""
    if ret < 0:
        raise LibbpfError(what, -ret)
    return ret


# ---- logging: libbpf's printf-style messages -> Python logging -------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_vsnprintf = _libc.vsnprintf
_vsnprintf.restype = ctypes.c_int
_vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
# A va_list can be consumed once, so format into one buffer big enough for a verifier log.
_print_buf = ctypes.create_string_buffer(1 << 20)
_print_lock = threading.Lock()
_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}  # LIBBPF_WARN/INFO/DEBUG


def _print(level: int, fmt: bytes | None, ap: int | None) -> int:
    py_level = _LEVELS.get(level, logging.DEBUG)
    if fmt is None or not log.isEnabledFor(py_level):
        return 0
    with _print_lock:
        n = _vsnprintf(_print_buf, len(_print_buf), fmt, ap)
        text = _print_buf.value.decode("utf-8", "replace").rstrip("\n")
    if n >= len(_print_buf):
        text += " [...]"
    log.log(py_level, "%s", text)
    return 0


_print_cb = PRINT_FN(_print)  # kept alive for as long as libbpf may call it


def _install_print() -> None:
    assert _lib is not None
    _lib.libbpf_set_print(_print_cb)


# ---- objects ------------------------------------------------------------------------------


def num_possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


class Map:
    """A map of an opened object (valid until the object is closed)."""

    def __init__(self, ptr: int, name: str) -> None:
        self._ptr = ptr
        self.name = name

    def set_max_entries(self, n: int) -> None:
        """Before load only (ring buffer size in bytes, or array entries)."""
        _check(lib().bpf_map__set_max_entries(self._ptr, n), f"resize map {self.name}")

    def set_initial_value(self, value: ctypes._CData) -> None:
        """Before load only: the whole content of a global-data map (.data / .rodata.*),
        e.g. a ``const volatile`` config the verifier then treats as constants."""
        ret = lib().bpf_map__set_initial_value(self._ptr, ctypes.byref(value), ctypes.sizeof(value))
        _check(ret, f"set initial value of map {self.name}")

    @property
    def fd(self) -> int:
        return _check(lib().bpf_map__fd(self._ptr), f"fd of map {self.name}")

    @property
    def value_size(self) -> int:
        return int(lib().bpf_map__value_size(self._ptr))

    def lookup(self, key: ctypes._CData, value: ctypes._CData) -> None:
        """Fill ``value`` (for per-CPU maps: one slot per possible CPU, 8-byte aligned)."""
        ret = lib().bpf_map_lookup_elem(self.fd, ctypes.byref(key), ctypes.byref(value))
        _check(ret, f"lookup in map {self.name}")

    def update(self, key: ctypes._CData, value: ctypes._CData, flags: int = 0) -> None:
        ret = lib().bpf_map_update_elem(self.fd, ctypes.byref(key), ctypes.byref(value), flags)
        _check(ret, f"update of map {self.name}")


class Link:
    def __init__(self, ptr: int, name: str) -> None:
        self._ptr: int | None = ptr
        self.name = name

    def destroy(self) -> None:
        if self._ptr is not None:
            lib().bpf_link__destroy(self._ptr)
            self._ptr = None


class BpfObject:
    """``bpf_object__open_file`` .. ``bpf_object__close``; use as a context manager."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        ctypes.set_errno(0)
        ptr = lib().bpf_object__open_file(self.path.encode(), None)
        if not ptr:
            raise LibbpfError(f"open BPF object {self.path}", _errno())
        self._ptr: int | None = ptr
        self._links: list[Link] = []

    def _obj(self) -> int:
        if self._ptr is None:
            raise LibbpfError(f"BPF object {self.path} is closed", errno_mod.EBADF)
        return self._ptr

    def map(self, name: str) -> Map:
        ptr = lib().bpf_object__find_map_by_name(self._obj(), name.encode())
        if not ptr:
            raise LibbpfError(f"map {name!r} not in {self.path}", errno_mod.ENOENT)
        return Map(ptr, name)

    def load(self) -> None:
        """Create maps, relocate and verify programs (needs CAP_BPF + CAP_PERFMON)."""
        _check(lib().bpf_object__load(self._obj()), f"load BPF object {self.path}")

    def _prog(self, program: str) -> int:
        prog = lib().bpf_object__find_program_by_name(self._obj(), program.encode())
        if not prog:
            raise LibbpfError(f"program {program!r} not in {self.path}", errno_mod.ENOENT)
        return int(prog)

    def prog_id(self, program: str) -> int:
        """After load: the kernel's id of ``program`` (as bpftool lists it)."""
        fd = _check(lib().bpf_program__fd(self._prog(program)), f"fd of program {program}")
        info = (ctypes.c_uint8 * 256)()  # struct bpf_prog_info: type u32, id u32, ...
        size = ctypes.c_uint32(len(info))
        _check(
            lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
            f"info of program {program}",
        )
        return ctypes.c_uint32.from_buffer(info, 4).value

    def set_autoload(self, program: str, on: bool) -> None:
        """Before load: whether ``program`` is loaded (and verified) at all."""
        ret = lib().bpf_program__set_autoload(self._prog(program), on)
        _check(ret, f"set autoload of program {program}")

    def attach(self, program: str) -> Link:
        prog = self._prog(program)
        ctypes.set_errno(0)
        ptr = lib().bpf_program__attach(prog)
        if not ptr:
            raise LibbpfError(f"attach program {program}", _errno())
        link = Link(ptr, program)
        self._links.append(link)
        return link

    def attach_perf_event(self, program: str, pfd: int) -> Link:
        """Attach to an open perf event; the link owns ``pfd`` (closed with it), and on
        failure it is closed here."""
        prog = self._prog(program)
        ctypes.set_errno(0)
        ptr = lib().bpf_program__attach_perf_event(prog, pfd)
        if not ptr:
            err = _errno()
            os.close(pfd)
            raise LibbpfError(f"attach program {program} to perf event", err)
        link = Link(ptr, program)
        self._links.append(link)
        return link

    def close(self) -> None:
        for link in self._links:
            link.destroy()
        self._links.clear()
        if self._ptr is not None:
            lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RingBuffer:
    """libbpf's ring buffer consumer; ``on_record(bytes)`` runs inside poll/consume.

    An exception raised by ``on_record`` stops consumption and is re-raised from the
    poll/consume call that ran it, so a decoding bug is loud, not a silent gap.
    """

    def __init__(self, rb_map: Map, on_record: Callable[[bytes], None]) -> None:
        self._on_record = on_record
        self._error: BaseException | None = None
        self._cb = SAMPLE_FN(self._sample)  # must outlive the ring buffer
        ctypes.set_errno(0)
        ptr = lib().ring_buffer__new(rb_map.fd, self._cb, None, None)
        if not ptr:
            raise LibbpfError(f"ring_buffer__new on map {rb_map.name}", _errno())
        self._ptr: int | None = ptr
        self._map_fd = rb_map.fd
        self._wakeups: select.epoll | None = None  # made by the first wait()

    def _sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._on_record(ctypes.string_at(data or 0, size))
        except BaseException as exc:  # re-raised by _after(); never unwind through C
            self._error = exc
            return -errno_mod.ECANCELED
        return 0

    def _after(self, ret: int, what: str) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if ret == -errno_mod.EINTR:
            return 0
        return _check(ret, what)

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for a wakeup, consuming what it signalled."""
        if self._ptr is None:
            raise LibbpfError("ring buffer is closed", errno_mod.EBADF)
        return self._after(lib().ring_buffer__poll(self._ptr, timeout_ms), "ring_buffer__poll")

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for a wakeup *without* consuming: True when the ring
        was woken (a record submitted with a wakeup) since the last ``wait`` returned; its
        records stay for a later poll/consume. ``wait(0)`` forgets earlier wakeups."""
        if self._ptr is None:
            raise LibbpfError("ring buffer is closed", errno_mod.EBADF)
        if self._wakeups is None:
            # edge-triggered on the map's fd: each wakeup is reported once. libbpf's own
            # (level-triggered) epoll also reports a ring that merely holds records sent
            # without a wakeup once it was woken before.
            self._wakeups = select.epoll()
            self._wakeups.register(self._map_fd, select.EPOLLIN | select.EPOLLET)
        return bool(self._wakeups.poll(timeout_ms / 1e3, 1))

    def consume(self) -> int:
        """Consume everything available now, woken or not (records sent with NO_WAKEUP)."""
        if self._ptr is None:
            raise LibbpfError("ring buffer is closed", errno_mod.EBADF)
        return self._after(lib().ring_buffer__consume(self._ptr), "ring_buffer__consume")

    def free(self) -> None:
        if self._ptr is not None:
            lib().ring_buffer__free(self._ptr)
            self._ptr = None
        if self._wakeups is not None:
            self._wakeups.close()
            self._wakeups = None
