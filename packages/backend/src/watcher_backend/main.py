"""``watcher-backend``: run the API server (uvicorn, one worker).

Logs, in this order: ``Server starting on port <port>``, ``Database initialized`` (after
migrations) and ``API endpoints ready`` (once the socket accepts connections).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from watcher_common.logs import setup_logging

from . import __version__
from .app import create_app
from .config import Settings

log = logging.getLogger("watcher_backend")


# First-generation threshold once the server runs (CPython's default is 700).
GC_GEN0_THRESHOLD = 100_000


def quiet_gc() -> None:
    """Keep the cyclic garbage collector off the start-up heap and out of ingest.

    After start-up the heap holds ~130k long-lived container objects (FastAPI, pydantic,
    SQLAlchemy, the migrations). Every full collection walked all of them, and a 500-event
    batch allocates enough to trigger collections many times: 6-8 % of the backend's CPU
    under batched ingest (perf; gc callbacks: 0.65 s of GC per 50k events; 0.15 s with a
    first threshold of 20,000; none at 100,000, where 16 batches of 500 in flight never
    leave that many new container objects alive).
    ``gc.freeze`` moves the start-up heap out of the collector's view for good, and a
    higher first threshold collects less often: request objects are freed by reference
    counting anyway, and cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


class _Server(uvicorn.Server):
    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            quiet_gc()
            log.info("API endpoints ready")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="watcher-backend",
        description="JCode Watcher backend: ingest, storage, query and compat API. "
        "Options override the environment (PORT, DB_URL, LOG_LEVEL; tokens only from "
        "WATCHER_{AGENT,READER,ADMIN}_TOKEN[_FILE]).",
    )
    p.add_argument("--host", default=None, help="listen address (HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (PORT, default 3000)")
    p.add_argument(
        "--db-url",
        default=None,
        help="SQLAlchemy URL (DB_URL, default sqlite:///./data/watcher.db; "
        "postgresql+psycopg://user:pw@host/db to scale)",
    )
    p.add_argument("--log-level", default=None, help="LOG_LEVEL (default INFO)")
    p.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log every request (WATCHER_ACCESS_LOG; off by default)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            db_url=args.db_url,
            log_level=args.log_level,
            access_log=args.access_log,
        )
    except ValueError as exc:
        print(f"watcher-backend: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(
        settings.log_level,
        "watcher_backend",
        tokens=settings.agent_tokens + settings.reader_tokens + settings.admin_tokens,
    )
    log.info("Server starting on port %d", settings.port)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        access_log=settings.access_log,
        log_config=None,  # keep our one-line, token-redacting format
        log_level=settings.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
