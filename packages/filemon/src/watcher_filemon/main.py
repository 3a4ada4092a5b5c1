"""``watcher-filemon``: capture every saved version of student files into the outbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections.abc import Sequence

from prometheus_client import REGISTRY

from watcher_common.agent_config import ConfigError
from watcher_common.agent_http import AgentHttpServer
from watcher_common.agent_runtime import AgentRuntime
from watcher_common.logs import setup_logging
from watcher_filemon.agent import Filemon, agent_version
from watcher_filemon.config import ENV_HELP, FilemonConfig
from watcher_filemon.metrics import FilemonMetrics

log = logging.getLogger("watcher_filemon")

SHUTDOWN_BUDGET_S = 4.5  # SIGTERM → exit within 5 s


async def run(cfg: FilemonConfig) -> None:
    rt = AgentRuntime.open("watcher-filemon", cfg.agent, cfg.outbox_path, agent_version(), REGISTRY)
    outbox, health, sender = rt.outbox, rt.health, rt.sender
    metrics = FilemonMetrics(REGISTRY)
    http = AgentHttpServer(health, REGISTRY, port=cfg.agent.metrics_port).start()
    filemon = Filemon(cfg, outbox, metrics=metrics, health=health)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sender_task = loop.create_task(sender.run_forever())
    try:
        await filemon.start()
        await stop.wait()
        log.info("filemon stopping")
    finally:
        t0 = time.monotonic()
        await filemon.stop()
        left = max(0.5, SHUTDOWN_BUDGET_S - (time.monotonic() - t0))
        await sender.stop(drain_timeout_s=left)
        with contextlib.suppress(asyncio.CancelledError):
            await sender_task
        http.stop()
        log.info("outbox holds %d events at exit", outbox.stats().events)
        outbox.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="watcher-filemon",
        description=(
            "JCode Watcher file agent: watches WATCH_ROOT with inotify and records every"
            " saved version of every student source file (plus deletes and renames) in a"
            " durable outbox that is sent to the backend."
        ),
        epilog=ENV_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=agent_version())
    parser.parse_args(argv)
    try:
        cfg = FilemonConfig.from_env()
    except (ConfigError, ValueError) as exc:
        print(f"watcher-filemon: {exc}", file=sys.stderr)
        return 2
    token = cfg.agent.agent_token
    setup_logging(cfg.agent.log_level, "watcher_filemon", tokens=[token] if token else [])
    try:
        asyncio.run(run(cfg))
    except FileNotFoundError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
