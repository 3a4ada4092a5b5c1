"""SQLite WAL checkpoints on their own thread, off the group-commit writer's path.

With the default ``wal_autocheckpoint`` the commit that pushes the WAL past 1,000 pages
runs the checkpoint itself: it copies the WAL into the database and fsyncs both, while
the writer thread (the only one that can store events) waits. Under batched ingest that
was most commits, and the backend sat idle for the fsyncs (bench b: 0.77 of a core busy).

Here the writer's connection only checkpoints as a backstop (``BACKSTOP_PAGES``, if this
thread ever falls behind) and pokes this thread after each commit; it runs a PASSIVE
checkpoint on its own pooled connection (never blocks the writer or readers; the driver
releases the GIL while SQLite copies and syncs). Durability is unchanged: a commit is in
the WAL before it is answered, and WAL frames are replayed after a crash either way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine

log = logging.getLogger(__name__)

# The writer's own autocheckpoint, in pages, while this thread runs (~200 MB of WAL).
BACKSTOP_PAGES = 50_000
# SQLite's default, restored on the writer's connection before it returns to the pool.
DEFAULT_PAGES = 1000
# Checkpoint at most this often: pages rewritten by several commits are copied once.
# Longer saves ingest CPU (0.5 s: 3.5 -> 2.0 µs per snapshot in bench b's data) but each
# checkpoint then holds the one core longer: compat write p99 (bench a) 14-21 ms at 0.1 s,
# 16-28 ms at 0.25 s, 17-42 ms at 0.5 s (target 50). 0.1 s keeps the tail.
MIN_INTERVAL_S = 0.1
# ... except under bulk ingest (a commit since the last checkpoint held BULK_EVENTS+ events:
# agents' batches, not single compat writes): then pages rewritten by several commits are
# copied once, and a request already waits for a commit of thousands of events.
BULK_EVENTS = 1000
BULK_INTERVAL_S = 0.5


def wants_checkpointer(engine: Engine) -> bool:
    """True for a file-backed SQLite database (not ``:memory:``, where WAL does not apply)."""
    db = engine.url.database
    return engine.dialect.name == "sqlite" and bool(db) and db != ":memory:"


class Checkpointer:
    def __init__(
        self,
        engine: Engine,
        *,
        min_interval_s: float = MIN_INTERVAL_S,
        bulk_interval_s: float = BULK_INTERVAL_S,
    ) -> None:
        self.engine = engine
        self.min_interval_s = min_interval_s
        self.bulk_interval_s = bulk_interval_s
        self._largest = 0  # events in the largest commit since the last checkpoint
        self._wake = threading.Event()
        self._stop = threading.Event()  # also ends the pause after a checkpoint at once
        self._thread: threading.Thread | None = None
        self.checkpoints = 0  # completed PASSIVE checkpoints (written by the thread only)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="watcher-checkpoint", daemon=True)
        self._thread.start()

    def poke(self, events: int = 0) -> None:
        """Called after a commit of ``events`` events: checkpoint soon (cheap)."""
        if events > self._largest:  # a lost race only shortens one interval
            self._largest = events
        self._wake.set()

    def interval_s(self, largest_commit: int) -> float:
        """The pause after a checkpoint, by the largest commit it covered."""
        return self.bulk_interval_s if largest_commit >= BULK_EVENTS else self.min_interval_s

    def stop(self, timeout: float = 30.0) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        raw: Any = None
        try:
            raw = self.engine.raw_connection()
            while True:
                self._wake.wait()
                if self._stop.is_set():
                    break
                self._wake.clear()
                largest, self._largest = self._largest, 0
                try:
                    self._checkpoint(raw)
                except sqlite3.Error as exc:
                    # e.g. a full disk: try again after the next commit
                    log.warning("WAL checkpoint failed (%s)", type(exc).__name__)
                # commits meanwhile only set the Event; stop() ends the pause
                self._stop.wait(self.interval_s(largest))
            self._checkpoint(raw)  # the writer has stopped: leave a short WAL behind
        except Exception:
            # The writer's backstop autocheckpoint keeps the WAL bounded without us.
            log.warning("WAL checkpoint thread failed", exc_info=True)
        finally:
            if raw is not None:
                raw.close()

    def _checkpoint(self, raw: Any) -> None:
        cur = raw.driver_connection.cursor()
        try:
            cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            cur.close()
        self.checkpoints += 1
