"""Runs one Sender on an outbox file until SIGTERM (used by the kill/restart test)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import CollectorRegistry

from watcher_common.outbox import Outbox
from watcher_common.sender import Sender


async def main(path: str, url: str, token: str, batch: int) -> None:
    outbox = Outbox(path, lock_timeout_s=10)
    sender = Sender(
        outbox,
        url,
        token,
        batch_max_events=batch,
        linger_s=0.0,
        backoff_base_s=0.05,
        backoff_cap_s=0.2,
        idle_poll_s=0.1,
        registry=CollectorRegistry(),
    )
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []
    loop.add_signal_handler(
        signal.SIGTERM, lambda: stopping.append(asyncio.ensure_future(sender.stop(5.0)))
    )
    print("ready", flush=True)
    await sender.run_forever()
    outbox.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
