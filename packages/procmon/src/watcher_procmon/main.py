"""``watcher-procmon``: the exec agent.

Loads the eBPF programs, turns every finished process in a student container into a
``ProcessRun`` (builds with their sources' hashes and compiler diagnostics) plus the
``FileSnapshot`` s captured at exec, writes them to the durable outbox and sends them to
the backend. ``--check`` only loads and attaches (to test a node's kernel and privileges);
``--stdout`` prints the wire events as JSON lines instead of sending them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from prometheus_client import REGISTRY

from watcher_common.agent_config import AgentSettings, ConfigError
from watcher_common.agent_http import AgentHttpServer, Health
from watcher_common.agent_runtime import AgentRuntime
from watcher_common.identity import IdentityConfig
from watcher_common.logs import setup_logging
from watcher_common.sender import preload_transport
from watcher_common.wire import Event, dump_event
from watcher_procmon.agent import Pipeline, agent_version
from watcher_procmon.metrics import KernelCollector, ProcmonMetrics
from watcher_procmon.tracer import Counters, Tracer, TracerConfig, TracerError

log = logging.getLogger("watcher_procmon")

EXIT_CANNOT_RUN = 2
DEFAULT_STATE_DIR = "/var/lib/watcher-procmon"
SHUTDOWN_BUDGET_S = 4.5  # SIGTERM -> exit within 5 s
HEALTH_CHECK_S = 5.0
DROP_CLEAR_S = 60.0  # ring buffer drops mark the agent degraded this long
DEFAULT_NICE = 10  # a build on a busy node waits less for the agent's bookkeeping
# see TracerLoop: in a burst, exec -> outbox grows by up to GAP_S + HOLD_S (p99 <= 100 ms)
HOLD_S = 0.03
GAP_S = 0.03
# While compilers run (one exec'd in the last BUILD_WINDOW_S): one read per BUILD_GAP_S.
# The same bound as GAP_S + HOLD_S with half the reads: a 51-file make -j2 took ~55 reads,
# now ~18 (each read is a cold start of the pipeline while the compilers own the caches).
# A read that captured a new source is written at once (exec -> outbox is bounded); runs
# (and sources the outbox already has) wait up to BUILD_HOLD_S for one transaction: a
# build's ~18 commits became ~2, and a run reaches the backend after the sender's linger
# (SEND_LINGER_S) anyway.
BUILD_GAP_S = 0.06
BUILD_WINDOW_S = 0.5
BUILD_HOLD_S = 1.0
# An idle reader's periodic poll backs off: each empty one doubles the next timeout (from
# the tracer's poll_ms) up to IDLE_POLL_MS; a read with records brings it back. Each wakeup
# costs ~0.1-0.2 ms of CPU here (80 ms: 2.3 ms a second for nothing, a sixth of what a build
# cost the agent). What waits longer is only a record sent without a wakeup as the first
# after a quiet spell: an exit, or the exec of a program that is neither compiler nor
# interpreter, and neither makes an event before its exit (a run is written at its end).
# Compiler and interpreter execs, whose captured sources exec -> outbox bounds (issue #4:
# p99 <= 100 ms), wake the reader at once. So a quick ./a.out's run reaches the outbox up
# to 0.5 s after its exit (the sender lingers up to SEND_LINGER_S after that anyway).
IDLE_POLL_MS = 500
# The sender's wait for a burst to fill its batch (its default: 0.2 s). A request costs the
# agent ~6 ms of CPU (warm; more between a build's compiles) whatever its size: a build's
# runs went out in ~5 requests a second (more CPU than tracing the build), 200 runs/s cost
# 1.7 % of a core in requests. The price: a run reaches the backend up to 3 s later. 3 s,
# not 2: a build's first new source starts the wait, and with 2 s the runs of a 1.4 s
# 51-file make (held up to BUILD_HOLD_S) often missed that request and took a second one.
# Up to SEND_BATCH_EVENTS per request (the backend's default limit; the sender's 500 and
# its 1 MiB cap): 3 s of runs at 200 execs/s, ~700 KB, still go in one request.
SEND_LINGER_S = 3.0
SEND_BATCH_EVENTS = 1000
# The /metrics + /health server wakes this often only to see whether it should stop (5 times
# a second by default: ~0.7 ms of CPU a second here); at shutdown it is stopped first, while
# the tracer and the sender finish, so the wait fits the shutdown budget.
HTTP_POLL_S = 2.0

ENV_HELP = """environment:
  STATE_DIR                         durable state; outbox at STATE_DIR/outbox.db
                                    (/var/lib/watcher-procmon)
  API_SERVER                        backend base URL (http://localhost:3000)
  WATCHER_AGENT_TOKEN[_FILE]        agent token sent to the backend
  METRICS_PORT                      /metrics and /health port (9090)
  NODE_NAME, LOG_LEVEL              node name (hostname), log level (INFO)
  WATCHER_PROCMON_NODENAME_PREFIX   UTS hostname prefix of student containers (jcode-)
  WATCHER_PROCMON_CAPTURE_STDERR    1: capture compilers' stderr (diagnostics); 0: off (1)
  WATCHER_PROCMON_BPF_OBJ           compiled procmon.bpf.o (build dir / installed copy)
  WATCHER_PROCMON_NICE              the agent's CPU niceness, 0-19: student work first (10)
  WATCHER_ASSIGNMENT_PATTERN, WATCHER_CONTAINER_ROOTS, ...  identity rules (watcher_common)
"""


@dataclass(frozen=True)
class ProcmonConfig:
    agent: AgentSettings
    state_dir: Path
    prefix: str
    capture_stderr: bool
    identity: IdentityConfig
    nice: int = DEFAULT_NICE

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.db"

    @classmethod
    def from_env(cls, prefix: str | None = None) -> ProcmonConfig:
        env = os.environ
        if prefix is None:
            prefix = env.get(
                "WATCHER_PROCMON_NODENAME_PREFIX", env.get("WATCHER_PROCMON_HOST_PREFIX", "jcode-")
            )
        raw = env.get("WATCHER_PROCMON_CAPTURE_STDERR", "1").strip().lower()
        if raw not in ("0", "1", "true", "false", "yes", "no", ""):
            raise ConfigError(f"WATCHER_PROCMON_CAPTURE_STDERR must be 0 or 1, got {raw!r}")
        raw_nice = env.get("WATCHER_PROCMON_NICE", "").strip() or str(DEFAULT_NICE)
        try:
            nice = int(raw_nice)
        except ValueError:
            nice = -1
        if not 0 <= nice <= 19:
            raise ConfigError(f"WATCHER_PROCMON_NICE must be 0-19, got {raw_nice!r}")
        ident = IdentityConfig.from_env()
        if prefix:  # the kernel filter and the hostname parser must agree
            ident = replace(ident, hostname_prefix=prefix)
        return cls(
            agent=AgentSettings.from_env(),
            state_dir=Path(env.get("STATE_DIR", "").strip() or DEFAULT_STATE_DIR),
            prefix=prefix,
            capture_stderr=raw in ("1", "true", "yes", ""),
            identity=ident,
            nice=nice,
        )


def lower_priority(nice: int) -> int:
    """Raise the niceness to ``nice`` (never lower it) before any thread starts: Linux
    keeps niceness per thread and new threads inherit it, so the tracer and the sender
    run below the students' compilers; a build on a full node then waits less for the
    agent, which catches up in the gaps (the kernel buffers its records meanwhile).
    Returns the niceness now in effect."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        return os.nice(nice - current)
    return current


class StdoutSink:
    """``--stdout``: one JSON line per wire event (file content left out)."""

    def put(self, event: Event, content: bytes | None = None) -> None:
        print(json.dumps(dump_event(event), ensure_ascii=False), flush=True)


def kernel_counters_now(tracer: Tracer, loop_: TracerLoop) -> Counters | None:
    """The in-kernel counters at scrape time (one per-CPU map lookup, from the metrics
    server's thread: the map is not the ring buffer the tracer thread reads); once the
    tracer is closed, the tracer loop's last reading."""
    try:
        return tracer.counters()
    except (TracerError, OSError):  # closed, or its map fd already gone
        return loop_.counters


class TracerLoop:
    """Reads the ring buffer in its own thread (libbpf's poll blocks) and feeds the
    pipeline; watches the kernel's drop counters for /health.

    A build wakes the reader for every compiler (capture-on-exec must read the sources
    while the compiler lives), i.e. every few milliseconds, and each read cost a cold
    start of the whole pipeline and an outbox transaction: the CPU a build lost to the
    agent. So after a read the reader woke for, the next one waits ``gap_s`` (records, and
    wakeups, of that burst pile up in the ring buffer meanwhile; a compiler that exits in
    between is read through its parent or a peer, see sources.py), and the write of a
    read that found its records already waiting (a burst) waits up to ``hold_s`` for the
    next reads: one transaction for several compiles. While a build runs (a compiler
    exec'd in the last BUILD_WINDOW_S) a read waits ``build_gap_s`` after the wakeup that
    asks for it (for the same bound on exec -> outbox, a read saved is worth as much as a
    write: each is a cold start while the compilers have the caches), a read that captured
    a new source is written at once and the build's runs wait up to ``build_hold_s``
    (:meth:`_build_step`); outside builds the short gap keeps
    commands that follow each other (a script's runs) close to their exec. A lone exec is
    read and written at once, as is whatever the periodic poll finds (a steady load gets
    no extra wakeups). A held record is in the agent's memory only, like one waiting for
    the periodic poll in the ring buffer: a crash loses it either way."""

    def __init__(
        self,
        tracer: Tracer,
        pipeline: Pipeline,
        health: Health | None,
        hold_s: float = HOLD_S,
        gap_s: float = GAP_S,
        build_gap_s: float = BUILD_GAP_S,
        build_hold_s: float = BUILD_HOLD_S,
        *,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.tracer = tracer
        self.pipeline = pipeline
        self.health = health
        self.hold_s = hold_s
        self.gap_s = gap_s
        self.build_gap_s = build_gap_s
        self.build_hold_s = build_hold_s
        self.on_exit = on_exit  # called from the thread as it ends (stopped or failed)
        self.poll_ms = tracer.config.poll_ms  # the periodic poll's timeout now (see step)
        self.counters: Counters | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="procmon-tracer", daemon=True)
        self._last_drops = 0
        self._drop_seen_at = 0.0
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def step(self) -> int:
        """One ring buffer read fed to the pipeline; how many records it had."""
        due = self.pipeline.commit_due_in()
        timeout = self.poll_ms
        if due is not None:
            timeout = min(timeout, math.ceil(due * 1e3))
        if self.pipeline.compiled_since(time.monotonic() - BUILD_WINDOW_S):
            return self._build_step(timeout)
        t0 = time.monotonic()
        events = self.tracer.read_events(timeout)
        waited_ms = (time.monotonic() - t0) * 1e3
        woken = waited_ms < timeout - 1  # by a record, not the timer
        base = self.tracer.config.poll_ms
        if events:
            self.poll_ms = base
        elif not woken:
            self.poll_ms = min(max(self.poll_ms * 2, 1), max(base, IDLE_POLL_MS))
        # Records already there when the read began (after a gap): a burst, whose writes
        # wait for its next reads. A read that waited for its record (a lone compile or
        # run) and the periodic poll write at once.
        self.pipeline.feed_many(events, self.hold_s if waited_ms < 1 else 0.0)
        # a read whose compiler began a build: the next one is a build step (it waits)
        if (
            events
            and woken
            and self.gap_s
            and not self.pipeline.compiled_since(time.monotonic() - BUILD_WINDOW_S)
        ):
            time.sleep(self.gap_s)
        return len(events)

    def _build_step(self, timeout_ms: int) -> int:
        """A read while a build runs: it waits ``build_gap_s`` after the wakeup that asks
        for it (a compiler's exec), so the compiles that follow within that time share it
        and its cold start, and no exec waits much longer than that for its capture (a
        fixed gap after each read made ~10 % more reads in a 51-file make -j2, for the
        same bound). New sources are written at once, runs held up to build_hold_s."""
        if self.tracer.wait(timeout_ms) and self.build_gap_s:
            time.sleep(self.build_gap_s)
        self.tracer.wait(0)  # the wakeups of what this read takes (those during the gap)
        events = self.tracer.read_events(0)
        self.poll_ms = self.tracer.config.poll_ms
        self.pipeline.feed_many(events, self.build_hold_s, urgent_s=0.0)
        return len(events)

    def _run(self) -> None:
        next_check = 0.0
        try:
            while not self._stop.is_set():
                self.step()
                if time.monotonic() >= next_check:
                    self._check()
                    next_check = time.monotonic() + HEALTH_CHECK_S
            self.pipeline.feed_many(self.tracer.read_events(0))  # arrived before the stop
            self.pipeline.flush()
            self._check()
        except BaseException as exc:  # surfaced by stop(); the agent exits non-zero
            self.error = exc
            log.exception("tracer loop failed")
            try:
                self.pipeline.commit()  # what earlier reads hold is still written
            except Exception:
                log.exception("held records could not be written")
        finally:
            self.pipeline.close()
            if self.on_exit is not None:
                self.on_exit()

    def _check(self) -> None:
        c = self.counters = self.tracer.counters()
        if c.dropped > self._last_drops:
            self._last_drops = c.dropped
            self._drop_seen_at = time.monotonic()
            if self.health is not None:
                self.health.set_degraded("ringbuf_drops", f"{c.dropped} kernel records lost")
        elif self.health is not None and time.monotonic() - self._drop_seen_at > DROP_CLEAR_S:
            self.health.clear("ringbuf_drops")

    def stop(self, timeout_s: float) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


async def run(cfg: ProcmonConfig, tracer: Tracer) -> int:
    preload_transport()  # the first send's lazy imports, paid before "ready"
    rt = AgentRuntime.open(
        "watcher-procmon",
        cfg.agent,
        cfg.outbox_path,
        agent_version(),
        REGISTRY,
        linger_s=SEND_LINGER_S,
        batch_max_events=SEND_BATCH_EVENTS,
    )
    outbox, health, sender = rt.outbox, rt.health, rt.sender
    sender.prepare()  # its HTTP client's TLS setup, also paid before "ready"
    metrics = ProcmonMetrics(REGISTRY)
    pipeline = Pipeline(
        outbox, node=cfg.agent.node_name, identity=cfg.identity, metrics=metrics, health=health
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def tracer_ended() -> None:
        # the tracer thread ended (a failure: stop() was not asked): the agent stops too
        with contextlib.suppress(RuntimeError):  # the event loop is already closed
            loop.call_soon_threadsafe(stop.set)

    # woken by a signal or the tracer's end, not a timer: an idle agent wakes for nothing
    loop_ = TracerLoop(tracer, pipeline, health, on_exit=tracer_ended)
    REGISTRY.register(KernelCollector(lambda: kernel_counters_now(tracer, loop_)))
    http = AgentHttpServer(health, REGISTRY, port=cfg.agent.metrics_port).start(HTTP_POLL_S)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sender_task = loop.create_task(sender.run_forever())
    loop_.start()
    log.info("procmon ready: tracing student containers (prefix %r)", cfg.prefix)
    try:
        await stop.wait()
        log.info("procmon stopping")
    finally:
        t0 = time.monotonic()
        http_stopped = asyncio.ensure_future(asyncio.to_thread(http.stop))  # up to HTTP_POLL_S
        await asyncio.to_thread(loop_.stop, 2.0)
        left = max(0.5, SHUTDOWN_BUDGET_S - (time.monotonic() - t0))
        await sender.stop(drain_timeout_s=left)
        with contextlib.suppress(asyncio.CancelledError):
            await sender_task
        await http_stopped
        log.info(
            "procmon stopped: %d runs, %d snapshots captured; outbox holds %d events",
            pipeline.runs,
            pipeline.snapshots,
            outbox.stats().events,
        )
        outbox.close()
    return 1 if loop_.error is not None else 0


def run_stdout(cfg: ProcmonConfig, tracer: Tracer) -> int:
    pipeline = Pipeline(StdoutSink(), node=cfg.agent.node_name, identity=cfg.identity)
    loop_ = TracerLoop(tracer, pipeline, None)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop_.start()
    log.info("procmon ready: JSON lines on stdout")
    while not stop.is_set() and loop_.alive:
        stop.wait(0.5)
    loop_.stop(2.0)
    return 1 if loop_.error is not None else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="watcher-procmon",
        description="JCode Watcher exec agent: traces every compile and run in student "
        "containers with CO-RE eBPF (libbpf) -- exit status, argv, the source files "
        "compiled (hashed and snapshotted at exec) and the compiler's diagnostics -- and "
        "sends them to the backend through a durable outbox.",
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--prefix",
        default=None,
        help="UTS hostname prefix of student containers; '' traces every process "
        "(default: $WATCHER_PROCMON_NODENAME_PREFIX or 'jcode-')",
    )
    p.add_argument(
        "--bpf-object",
        type=Path,
        default=None,
        help="compiled procmon.bpf.o (default: $WATCHER_PROCMON_BPF_OBJ, the build dir, "
        "or the copy installed in the package)",
    )
    p.add_argument("--check", action="store_true", help="load and attach, then exit 0")
    p.add_argument(
        "--stdout", action="store_true", help="print wire events as JSON lines; no outbox"
    )
    p.add_argument("--log-level", default=None, help="overrides LOG_LEVEL")
    p.add_argument("--version", action="version", version=agent_version())
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = ProcmonConfig.from_env(args.prefix)
    except (ConfigError, ValueError) as exc:
        print(f"watcher-procmon: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    token = cfg.agent.agent_token
    level = (args.log_level or cfg.agent.log_level).upper()
    setup_logging(level, "watcher_procmon", tokens=[token] if token else [])
    log.info("procmon starting (version %s, node %s)", agent_version(), cfg.agent.node_name)
    try:
        tracer = Tracer(
            TracerConfig(
                prefix=cfg.prefix,
                bpf_object=args.bpf_object,
                capture_stderr=cfg.capture_stderr,
            )
        )
    except (TracerError, FileNotFoundError, ValueError) as exc:
        log.error("procmon cannot start: %s", exc)
        return EXIT_CANNOT_RUN
    with tracer:
        log.info(
            "eBPF programs attached (stderr capture %s)", "on" if cfg.capture_stderr else "off"
        )
        if args.check:
            log.info("procmon check ok: BPF programs loaded and attached")
            return 0
        # before run() starts the tracer, sender and HTTP threads: they inherit it
        log.info("running at nice %d", lower_priority(cfg.nice))
        if args.stdout:
            return run_stdout(cfg, tracer)
        return asyncio.run(run(cfg, tracer))


if __name__ == "__main__":
    sys.exit(main())
