"""Load and attach procmon.bpf.o, read its ring buffer and counters, pair events.

Usage::

    with Tracer(TracerConfig(prefix="jcode-")) as t:
        while True:
            for record in t.poll():
                ...
"""

from __future__ import annotations

import ctypes
import errno
import logging
from dataclasses import dataclass, fields
from pathlib import Path

from watcher_procmon import libbpf, tracepoint
from watcher_procmon.events import (
    PREFIX_MAX,
    STDERR_BUDGET,
    TOOL_COMPILER,
    TOOL_INTERPRETER,
    TOOL_NAME_LEN,
    TOOL_NONE,
    Event,
    PmConfig,
    PmCounters,
    decode,
    tool_bloom_bit,
)
from watcher_procmon.objpath import find_bpf_object
from watcher_procmon.records import BootClock, Pairer, ProcessRecord

log = logging.getLogger("watcher_procmon.tracer")

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
PROGRAMS = ("handle_exec", "handle_exit")
# stderr capture: the write(2)-only trace event if its id can be had, else raw sys_enter
WRITE_PROGRAM = "handle_write"
STDERR_PROGRAM = "handle_sys_enter"
WRITE_EVENT = ("syscalls", "sys_enter_write")
CONFIG_MAP = ".rodata.cfg"  # the programs' const volatile struct pm_config

# The kernel's "tools" map (see procmon_event.h): exe basenames after a version suffix and a
# triplet prefix are cut. Explicit NONE entries keep gcc's passes from matching "cc"/"as"
# after the cut ("cc1" -> "cc"); they are still captured as children of their driver.
TOOL_CLASSES: dict[str, int] = {
    **dict.fromkeys(("gcc", "g++", "cc", "c++", "clang", "clang++", "javac"), TOOL_COMPILER),
    **dict.fromkeys(("python", "java", "node", "nodejs"), TOOL_INTERPRETER),
    **dict.fromkeys(("cc1", "cc1plus", "cc1obj", "f951", "lto1"), TOOL_NONE),
}


class TracerError(RuntimeError):
    """procmon cannot run here; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class TracerConfig:
    prefix: str = "jcode-"  # UTS nodename prefix of student containers ("" = everything)
    ringbuf_bytes: int = 8 << 20  # power of two, multiple of the page size
    wakeup_every: int = 256  # wake the reader every N records per CPU ...
    wakeup_bytes: int = 16 << 10  # ... or at once for a record this large
    poll_ms: int = 50  # ... and read whatever is there at least this often
    # compilers' stderr (diagnostics); off: no write hook is even loaded
    capture_stderr: bool = True
    # False: skip the write(2) trace event and hook raw sys_enter (every syscall) instead
    write_event: bool = True
    stderr_budget: int = STDERR_BUDGET  # bytes per build (driver + children)
    bpf_object: Path | None = None  # default: objpath.find_bpf_object()


@dataclass(frozen=True, slots=True)
class Counters:
    exec_seen: int
    exec_emitted: int
    exec_filtered: int
    exec_drop_ringbuf: int
    exec_drop_scratch: int
    exit_seen: int
    exit_emitted: int
    exit_filtered: int
    exit_drop_ringbuf: int
    exec_read_err: int
    exec_not_tracked: int
    wakeups: int
    stderr_seen: int
    stderr_emitted: int
    stderr_drop_budget: int
    stderr_drop_ringbuf: int
    stderr_read_err: int
    capture_full: int
    # compiler passes (cc1, as, ld ...) captured without exec / exit records: see
    # procmon_event.h
    exec_folded: int
    exit_folded: int

    @property
    def dropped(self) -> int:
        """Records lost (ring buffer full, no scratch): never expected."""
        return (
            self.exec_drop_ringbuf
            + self.exec_drop_scratch
            + self.exit_drop_ringbuf
            + self.stderr_drop_ringbuf
        )

    def balanced(self) -> bool:
        """seen == emitted + filtered + folded + dropped, for execs and for exits."""
        return (
            self.exec_seen
            == self.exec_emitted
            + self.exec_filtered
            + self.exec_folded
            + self.exec_drop_ringbuf
            + self.exec_drop_scratch
            and self.exit_seen
            == self.exit_emitted + self.exit_filtered + self.exit_folded + self.exit_drop_ringbuf
            and self.stderr_seen
            == self.stderr_emitted
            + self.stderr_drop_budget
            + self.stderr_drop_ringbuf
            + self.stderr_read_err
        )


def check_environment() -> None:
    """Fail early with an actionable message (before libbpf's generic errors)."""
    if not BTF_PATH.exists():
        raise TracerError(
            f"{BTF_PATH} is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y is "
            "needed for CO-RE); procmon cannot run on it"
        )


def _privilege_hint(exc: OSError) -> str:
    if exc.errno in (errno.EPERM, errno.EACCES):
        return (
            " -- insufficient privileges: run as root, or grant CAP_BPF + CAP_PERFMON "
            "(CAP_SYS_ADMIN also works)"
        )
    return ""


class Tracer:
    def __init__(self, config: TracerConfig | None = None) -> None:
        self.config = cfg = config or TracerConfig()
        prefix = cfg.prefix.encode()
        if len(prefix) > PREFIX_MAX:
            raise ValueError(f"prefix longer than {PREFIX_MAX} bytes")
        check_environment()
        path = cfg.bpf_object or find_bpf_object()
        self.pairer = Pairer(BootClock())
        self._events: list[Event] = []
        self._obj: libbpf.BpfObject | None = None
        self._rb: libbpf.RingBuffer | None = None
        self.stderr_hook: str | None = None  # the attached stderr program (None: capture off)
        try:
            self._open(path, prefix)
        except OSError as exc:
            self.close()
            raise TracerError(f"{exc}{_privilege_hint(exc)}") from exc

    def _open(self, path: Path, prefix: bytes) -> None:
        cfg = self.config
        self._obj = obj = libbpf.BpfObject(path)
        self._ncpu = libbpf.num_possible_cpus()
        obj.map("events").set_max_entries(cfg.ringbuf_bytes)
        obj.map("scratch").set_max_entries(self._ncpu)  # one exec scratch area per CPU
        # The config is .rodata, fixed before load: the verifier folds it into the programs
        # (the prefix compare becomes constants, disabled features are pruned).
        c = PmConfig(
            prefix=prefix,
            prefix_len=len(prefix),
            enabled=1,
            wakeup_every=cfg.wakeup_every,
            wakeup_bytes=cfg.wakeup_bytes,
            capture_stderr=int(cfg.capture_stderr),
            stderr_budget=cfg.stderr_budget,
            tool_bloom=sum({1 << tool_bloom_bit(n.encode()) for n in TOOL_CLASSES}),
        )
        obj.map(CONFIG_MAP).set_initial_value(c)
        # one stderr hook at most: write(2)'s trace event (other syscalls run no BPF at all)
        # when its id can be found, else raw sys_enter
        write_id = None
        if cfg.capture_stderr and cfg.write_event:
            write_id = tracepoint.event_id(*WRITE_EVENT)
        obj.set_autoload(WRITE_PROGRAM, write_id is not None)
        obj.set_autoload(STDERR_PROGRAM, cfg.capture_stderr and write_id is None)
        self.stderr_hook = (
            None if not cfg.capture_stderr else WRITE_PROGRAM if write_id else STDERR_PROGRAM
        )
        obj.load()
        self._stats = obj.map("stats")
        self._counter_slot = (self._stats.value_size + 7) & ~7  # per-CPU values are 8-aligned
        tools = obj.map("tools")
        for name, cls in TOOL_CLASSES.items():
            key = ctypes.create_string_buffer(name.encode(), TOOL_NAME_LEN)  # NUL-padded
            tools.update(key, ctypes.c_uint32(cls))
        self._rb = libbpf.RingBuffer(obj.map("events"), self._on_record)
        for prog in PROGRAMS:
            obj.attach(prog)
        if write_id is not None:
            obj.attach_perf_event(WRITE_PROGRAM, tracepoint.open_tracepoint(write_id))
        elif cfg.capture_stderr:
            obj.attach(STDERR_PROGRAM)
        attached = [*PROGRAMS, *([self.stderr_hook] if self.stderr_hook else [])]
        # the ids tell this instance's programs apart in bpftool / bpf_stats
        log.info(
            "procmon BPF attached (%s, prefix %r, stderr hook %s, program ids %s)",
            path,
            self.config.prefix,
            self.stderr_hook,
            " ".join(f"{p}={obj.prog_id(p)}" for p in attached),
        )

    def _on_record(self, raw: bytes) -> None:
        self._events.append(decode(raw))

    def read_events(self, timeout_ms: int | None = None) -> list[Event]:
        """Raw events: waits for a wakeup up to ``timeout_ms`` (default poll_ms), then also
        takes the records that were submitted without one."""
        if self._rb is None:
            raise TracerError("tracer is closed")
        # a poll that took records took all there were (one ring); one that took none may
        # have timed out with records sent without a wakeup waiting
        if not self._rb.poll(self.config.poll_ms if timeout_ms is None else timeout_ms):
            self._rb.consume()
        out, self._events = self._events, []
        return out

    def wait(self, timeout_ms: int) -> bool:
        """Wait up to ``timeout_ms`` for a wakeup without reading: True when one came."""
        if self._rb is None:
            raise TracerError("tracer is closed")
        return self._rb.wait(timeout_ms)

    def poll(self, timeout_ms: int | None = None) -> list[ProcessRecord]:
        """Completed process records."""
        done: list[ProcessRecord] = []
        for ev in self.read_events(timeout_ms):
            rec = self.pairer.feed(ev)
            if rec is not None:
                done.append(rec)
        return done

    def counters(self) -> Counters:
        """The in-kernel counters summed over CPUs (each CPU's slice is read atomically,
        the whole is not: compare at rest, or retry)."""
        if self._obj is None:
            raise TracerError("tracer is closed")
        buf = (ctypes.c_uint8 * (self._counter_slot * self._ncpu))()
        self._stats.lookup(ctypes.c_uint32(0), buf)
        total = dict.fromkeys((f.name for f in fields(Counters)), 0)
        for cpu in range(self._ncpu):
            one = PmCounters.from_buffer(buf, cpu * self._counter_slot)
            for name in total:
                total[name] += getattr(one, name)
        return Counters(**total)

    def close(self) -> None:
        if self._rb is not None:
            self._rb.free()
            self._rb = None
        if self._obj is not None:
            self._obj.close()
            self._obj = None

    def __enter__(self) -> Tracer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
