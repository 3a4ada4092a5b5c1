"""Attach a BPF program to a trace event (``tp/<category>/<name>``) without needing tracefs
mounted on the node.

A trace event is attached through ``perf_event_open(PERF_TYPE_TRACEPOINT, config=<id>)``,
and its id is only published in tracefs (``events/<category>/<name>/id``). Nodes often have
no tracefs mounted, so when it is not, a short-lived child process mounts one in a private
mount namespace of its own, reads the id and exits: nothing is mounted on the node. That
needs CAP_SYS_ADMIN; without it (or without the event) :func:`event_id` returns None and the
caller uses its fallback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

log = logging.getLogger("watcher_procmon.tracepoint")

TRACEFS_MOUNTS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# Runs in the child: unshare the mount namespace, make it private (so the mount does not
# propagate back to the node), mount tracefs and print the id. Exit codes only: no output
# but the id.
_CHILD = r"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS, MS_REC, MS_PRIVATE = 0x00020000, 0x4000, 0x40000
if libc.unshare(CLONE_NEWNS) != 0:
    sys.exit(3)
if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
    sys.exit(4)
if libc.mount(b"tracefs", b"/sys/kernel/tracing", b"tracefs", 0, None) != 0:
    sys.exit(5)
try:
    print(open("/sys/kernel/tracing/events/" + sys.argv[1] + "/id").read().strip())
except OSError:
    sys.exit(6)
"""

# linux/perf_event.h
PERF_TYPE_TRACEPOINT = 2
PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_SIZE = 128  # PERF_ATTR_SIZE_VER7; the fields past config stay 0
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241, "riscv64": 241, "ppc64le": 319}

_libc = ctypes.CDLL(None, use_errno=True)


def _read_id(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def event_id(category: str, name: str) -> int | None:
    """The trace event's id, from a mounted tracefs or a private mount; None: unavailable."""
    event = f"{category}/{name}"
    for root in TRACEFS_MOUNTS:
        if (found := _read_id(root / "events" / event / "id")) is not None:
            return found
    try:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", _CHILD, event],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("no tracefs for %s: %s", event, exc)
        return None
    if proc.returncode != 0:
        # 3: no CAP_SYS_ADMIN to unshare, 5: no tracefs in this kernel, 6: no such event
        log.info("no tracefs for %s (private mount helper exit %d)", event, proc.returncode)
        return None
    try:
        return int(proc.stdout.strip())
    except ValueError:
        return None


def open_tracepoint(tp_id: int) -> int:
    """A perf event fd on trace event ``tp_id`` (all CPUs, all tasks) to attach BPF to."""
    nr = _NR_PERF_EVENT_OPEN.get(platform.machine())
    if nr is None:
        raise OSError(f"perf_event_open: unknown syscall number on {platform.machine()}")
    attr = (ctypes.c_uint8 * _PERF_ATTR_SIZE)()
    ctypes.c_uint32.from_buffer(attr, 0).value = PERF_TYPE_TRACEPOINT  # type
    ctypes.c_uint32.from_buffer(attr, 4).value = _PERF_ATTR_SIZE  # size
    ctypes.c_uint64.from_buffer(attr, 8).value = tp_id  # config
    # pid -1, cpu 0: a trace event's BPF program runs for every task on every CPU
    fd = int(
        _libc.syscall(
            ctypes.c_long(nr),
            ctypes.byref(attr),
            ctypes.c_int(-1),
            ctypes.c_int(0),
            ctypes.c_int(-1),
            ctypes.c_ulong(PERF_FLAG_FD_CLOEXEC),
        )
    )
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open(tracepoint {tp_id}): {os.strerror(err)}")
    return fd
