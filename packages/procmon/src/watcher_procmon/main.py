"""``watcher-procmon``: the exec agent's entry point.

For now it loads the BPF tracer and prints one JSON line per completed process record
(the outbox/sender half of the agent is a later step of issue 4). ``--check`` only loads
and attaches, which is how to test a node's kernel and privileges.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from watcher_procmon.records import ProcessRecord
from watcher_procmon.tracer import Tracer, TracerConfig, TracerError

log = logging.getLogger("watcher_procmon")

EXIT_CANNOT_RUN = 2


def record_json(rec: ProcessRecord) -> dict[str, Any]:
    ev = rec.exec
    return {
        "pid": ev.tgid,
        "ns_pid": ev.ns_tgid,
        "ppid": ev.ppid,
        "uid": ev.uid,
        "hostname": ev.nodename,
        "cgroup_id": ev.cgroup_id,
        "pidns": ev.pidns,
        "mntns": ev.mntns,
        "filename": ev.filename,
        "exe": ev.exe,
        "argv": list(ev.argv),
        "argv_truncated": ev.argv_truncated,
        "argv_len": ev.argv_len,
        "cwd": ev.cwd,
        "start": rec.start.isoformat(),
        "end": rec.end.isoformat() if rec.end else None,
        "duration_s": rec.duration_s,
        "exit_code": rec.exit_code,
        "signal": rec.signal,
        "core_dumped": rec.core_dumped,
        "replaced_by_exec": rec.replaced_by_exec,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="watcher-procmon",
        description="Trace exec/exit of processes in student containers (CO-RE eBPF via "
        "libbpf) and print one JSON line per finished process.",
    )
    p.add_argument(
        "--prefix",
        default=os.environ.get("WATCHER_PROCMON_HOST_PREFIX", "jcode-"),
        help="UTS hostname prefix of student containers; '' traces every process "
        "(env WATCHER_PROCMON_HOST_PREFIX, default %(default)r)",
    )
    p.add_argument(
        "--bpf-object",
        type=Path,
        default=None,
        help="compiled procmon.bpf.o (default: $WATCHER_PROCMON_BPF_OBJ, the build dir, "
        "or the copy installed in the package)",
    )
    p.add_argument("--check", action="store_true", help="load and attach, then exit 0")
    p.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        tracer = Tracer(TracerConfig(prefix=args.prefix, bpf_object=args.bpf_object))
    except (TracerError, FileNotFoundError) as exc:
        log.error("procmon cannot start: %s", exc)
        return EXIT_CANNOT_RUN
    stop = False

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    with tracer:
        if args.check:
            log.info("procmon check ok: BPF programs loaded and attached")
            return 0
        while not stop:
            for rec in tracer.poll():
                print(json.dumps(record_json(rec), ensure_ascii=False), flush=True)
        c = tracer.counters()
        log.info("stopping: %s", c)
    return 0


if __name__ == "__main__":
    sys.exit(main())
