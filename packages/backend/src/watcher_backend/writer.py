"""Group commit: one thread, one connection, one transaction for everything queued.

Requests from many clients land in a queue; the writer thread takes all of it (up to a
cap), applies the events of consecutive requests set-wise (``store.apply_batch``: a few
statements for the whole group instead of ~7 + a SAVEPOINT per event) and commits once —
one fsync for many requests. If the set-wise statements fail, that group is rolled back
and re-applied one event per SAVEPOINT, so only the faulty event is answered with an
error. Results go back to the awaiting coroutines with one ``call_soon_threadsafe`` per
event loop per commit.

The CPU part of an event (base64, sha256, zstd) is done by ``store.prepare_event`` in the
submitting thread: the writer thread should hold the GIL only around database calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from watcher_common.wire import Event, EventResult

from .db.checkpoint import BACKSTOP_PAGES, DEFAULT_PAGES, Checkpointer, wants_checkpointer
from .db.engine import WRITER_OPTION
from .db.rawsql import RawSql, raw_for
from .store import AnyEvent, IdCache, Outcome, Prepared, apply_batch, prepare_event, to_result

log = logging.getLogger(__name__)

T = TypeVar("T")

# (events applied, requests served, seconds the transaction took)
CommitHook = Callable[[int, int, float], None]
EventHook = Callable[[Counter[tuple[str, str]]], None]  # events per (kind, status)


class WriterStopped(RuntimeError):
    """The writer is not running (shutting down or never started)."""


@dataclass(slots=True)
class _Item:
    events: Sequence[Prepared] | None = None
    fn: Callable[[Connection], Any] | None = None
    invalidate_cache: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    afut: asyncio.Future[Any] | None = None
    cfut: concurrent.futures.Future[Any] | None = None
    result: Any = None
    error: BaseException | None = field(default=None)

    @property
    def weight(self) -> int:
        return len(self.events) if self.events is not None else 1


_STOP = object()
_KIND = attrgetter("event.kind")  # of a store.Prepared
_STATUS = itemgetter(1)  # of a store.Outcome
# Linger before draining the queue only while busy: the previous commit ended this recently.
_BUSY_S = 0.005
_LINGER_S = 0.001


class _SetwiseFailed(Exception):
    """The set-wise apply of a group's events failed; the group is redone per event."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


def _db_error_result(ev: AnyEvent, exc: BaseException, dbapi: Any) -> Outcome:
    """The answer for an event the database refused (found by the per-event retry)."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    name = type(orig).__name__
    if isinstance(exc, OperationalError) or isinstance(orig, dbapi.OperationalError):
        log.warning("event not stored: database error %s", name)
        return (ev.event_id, "retry", "database busy")
    # Constraint or data errors: the event itself is at fault. The driver's message may
    # hold row values (student ids), so only the type is logged and answered.
    log.warning("event rejected by the database: %s", name)
    return (ev.event_id, "rejected", f"database refused the event ({name})")


def _resolve_async(items: list[_Item]) -> None:
    for it in items:
        fut = it.afut
        if fut is None or fut.done():  # cancelled by a disconnected client
            continue
        if it.error is not None:
            fut.set_exception(it.error)
        else:
            fut.set_result(it.result)


class GroupCommitWriter:
    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int = 5000,
        on_commit: CommitHook | None = None,
        on_event: EventHook | None = None,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.on_commit = on_commit
        self.on_event = on_event
        self.cache = IdCache()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._running = False
        # SQLite: WAL checkpoints on their own thread, not in this writer's commits
        self.checkpointer = Checkpointer(engine) if wants_checkpointer(engine) else None
        # counters, written by the writer thread only
        self.commits = 0
        self.rollbacks = 0
        self.events_applied = 0
        self.items_served = 0

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        if self.checkpointer is not None:
            self.checkpointer.start()
        self._thread = threading.Thread(target=self._loop, name="watcher-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then stop the thread and close the connection."""
        if self._thread is None:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None
        if self.checkpointer is not None:
            self.checkpointer.stop(timeout)

    @property
    def running(self) -> bool:
        return self._running

    # ---- API ------------------------------------------------------------------------------

    async def submit(self, events: Sequence[Event]) -> list[EventResult]:
        """Apply ``events`` in the next group commit; one result per event, in order."""
        if not events:
            return []
        outcomes = await self.submit_prepared([prepare_event(ev) for ev in events])
        return [to_result(o) for o in outcomes]

    async def submit_prepared(self, prepared: Sequence[Prepared]) -> list[Outcome]:
        """``submit`` for events already passed through ``store.prepare_event``; answers
        plain ``(event_id, status, error)`` tuples (cheap to serialise in bulk)."""
        if not prepared:
            return []
        return cast(list[Outcome], await self._enqueue_async(_Item(events=prepared)))

    async def run(self, fn: Callable[[Connection], T], *, invalidate_cache: bool = False) -> T:
        """Run ``fn(conn)`` in the writer's transaction (in a savepoint) and return its result.

        Pass ``invalidate_cache=True`` if ``fn`` changes classes/students/assignments/files.
        """
        item = _Item(fn=fn, invalidate_cache=invalidate_cache)
        return cast(T, await self._enqueue_async(item))

    def submit_sync(self, events: Sequence[Event]) -> list[EventResult]:
        """``submit`` for threads (FastAPI ``def`` endpoints); blocks until committed."""
        if not events:
            return []
        prepared = [prepare_event(ev) for ev in events]
        outcomes = cast(list[Outcome], self._enqueue_sync(_Item(events=prepared)))
        return [to_result(o) for o in outcomes]

    def run_sync(self, fn: Callable[[Connection], T], *, invalidate_cache: bool = False) -> T:
        return cast(T, self._enqueue_sync(_Item(fn=fn, invalidate_cache=invalidate_cache)))

    async def _enqueue_async(self, item: _Item) -> Any:
        if not self._running:
            raise WriterStopped("the database writer is not running")
        loop = asyncio.get_running_loop()
        item.loop = loop
        item.afut = loop.create_future()
        self._queue.put(item)
        return await item.afut

    def _enqueue_sync(self, item: _Item) -> Any:
        if not self._running:
            raise WriterStopped("the database writer is not running")
        item.cfut = concurrent.futures.Future()
        self._queue.put(item)
        return item.cfut.result()

    # ---- the writer thread ------------------------------------------------------------

    def _loop(self) -> None:
        stopping = False
        last_end = float("-inf")
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch: list[_Item] = [first]
            weight = first.weight
            if time.perf_counter() - last_end < _BUSY_S:
                # A steady stream of small requests (old agents: one event per POST) made
                # ~1.5-event commits, and the BEGIN/COMMIT/metrics of each cost more than
                # the events. Sleeping releases the GIL/core so the event loop can queue
                # more: compat writes +16% req/s per CPU-second, p99 unchanged (wrk, c=16).
                time.sleep(_LINGER_S)
            while weight < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
                weight += nxt.weight
            self._process(batch)
            last_end = time.perf_counter()
        self._fail_pending()
        self._close()

    def _fail_pending(self) -> None:
        leftovers: list[_Item] = []
        while True:
            try:
                it = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(it, _Item):
                it.error = WriterStopped("the database writer stopped")
                leftovers.append(it)
        self._resolve(leftovers)

    def _connection(self) -> Connection:
        if self._conn is None:
            # WRITER_OPTION: BEGIN IMMEDIATE on SQLite (see db.engine)
            self._conn = self.engine.connect().execution_options(**{WRITER_OPTION: True})
            if self.checkpointer is not None:
                # only a backstop: the checkpointer thread keeps the WAL short
                self._set_autocheckpoint(self._conn, BACKSTOP_PAGES)
        return self._conn

    @staticmethod
    def _set_autocheckpoint(conn: Connection, pages: int) -> None:
        # on the driver connection: through SQLAlchemy it would open a transaction
        dbapi_conn: Any = conn.connection.driver_connection
        dbapi_conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}").fetchall()

    def _close(self) -> None:
        if self._conn is not None:
            if self.checkpointer is not None and not self._conn.invalidated:
                try:
                    # the connection goes back to the pool: default autocheckpoint again
                    self._set_autocheckpoint(self._conn, DEFAULT_PAGES)
                except self.engine.dialect.loaded_dbapi.Error:
                    self._conn.invalidate()  # broken: not back to the pool as it is
            try:
                self._conn.close()
            except SQLAlchemyError:
                log.warning("closing the writer connection failed", exc_info=True)
            self._conn = None

    def _process(self, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        n_events = sum(len(item.events) for item in batch if item.events is not None)
        try:
            conn = self._connection()
            try:
                with conn.begin():
                    self._apply_group(conn, batch, safe=False)
            except _SetwiseFailed as failed:
                # Redo the whole group (the transaction is rolled back) with one SAVEPOINT
                # per event, so only the faulty event is answered with an error.
                log.info("set-wise apply failed (%s); retrying per event", failed.cause)
                self.cache.clear()
                for item in batch:
                    item.result = item.error = None
                with conn.begin():
                    self._apply_group(conn, batch, safe=True)
            self.commits += 1
            if self.checkpointer is not None:
                self.checkpointer.poke(n_events)
        except Exception as exc:
            # The whole transaction is gone: every caller learns it, nothing was stored.
            self.rollbacks += 1
            self.cache.clear()
            log.error(
                "writer transaction failed (%s); %d requests answered with an error",
                type(exc).__name__,
                len(batch),
            )
            log.debug("writer transaction failure", exc_info=True)
            for item in batch:
                item.result = None
                item.error = exc
            self._close()  # reconnect next time (the connection may be broken)
            n_events = 0
        else:
            if self.on_event is not None and n_events:
                tally: Counter[tuple[str, str]] = Counter()
                for item in batch:
                    if item.events is not None:
                        # (kind, status) pairs counted in C: ~0.3 µs per event less
                        pairs = zip(map(_KIND, item.events), map(_STATUS, item.result), strict=True)
                        tally.update(pairs)
                self.on_event(tally)
        self.events_applied += n_events
        self.items_served += len(batch)
        self.cache.trim()
        self._resolve(batch)
        if self.on_commit is not None and n_events:
            self.on_commit(n_events, len(batch), time.perf_counter() - t0)

    def _apply_group(self, conn: Connection, batch: list[_Item], *, safe: bool) -> None:
        # Consecutive event requests are applied as one set; a fn item is a barrier (a blob
        # it uploads must be visible to the events after it).
        run: list[_Item] = []
        for item in batch:
            if item.events is not None:
                run.append(item)
            else:
                self._apply_items(conn, run, safe=safe)
                run = []
                self._apply_fn(conn, item)
        self._apply_items(conn, run, safe=safe)

    def _apply_items(self, conn: Connection, items: list[_Item], *, safe: bool) -> None:
        if not items:
            return
        events = [p for it in items for p in (it.events or ())]
        if safe:
            raw = raw_for(conn, self.cache.raw_holder)
            results = [self._apply_one(conn, raw, p) for p in events]
        else:
            # No SAVEPOINT here: on SQLite, statements inside a savepoint were measured
            # ~5x slower with a row trigger on the table (0003's snapshot-stats trigger:
            # +110 µs per snapshot). A failure rolls back the whole transaction instead
            # and the group is redone per event.
            try:
                results = apply_batch(conn, events, self.cache)
            except Exception as exc:
                raise _SetwiseFailed(type(exc).__name__) from exc
        k = 0
        for it in items:
            n = len(it.events or ())
            it.result = results[k : k + n]
            k += n

    def _apply_one(self, conn: Connection, raw: RawSql, p: Prepared) -> Outcome:
        raw.execute("SAVEPOINT ev")
        try:
            (result,) = apply_batch(conn, [p], self.cache)
        except Exception as exc:
            self._rollback_to(raw, "ev")
            return self._error_result(conn, p, exc)
        raw.execute("RELEASE SAVEPOINT ev")
        return result

    def _error_result(self, conn: Connection, p: Prepared, exc: Exception) -> Outcome:
        dbapi = conn.dialect.loaded_dbapi
        if isinstance(exc, DBAPIError | dbapi.Error):
            return _db_error_result(p.event, exc, dbapi)
        # A bug must not take the other requests of the group down with it.
        log.error("event %s could not be applied", p.event.kind, exc_info=exc)
        return (p.event.event_id, "retry", "internal error")

    def _rollback_to(self, raw: RawSql, savepoint: str) -> None:
        raw.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
        raw.execute(f"RELEASE SAVEPOINT {savepoint}")
        # ids or file states cached inside the savepoint may be gone now
        self.cache.clear()

    def _apply_fn(self, conn: Connection, item: _Item) -> None:
        assert item.fn is not None
        conn.exec_driver_sql("SAVEPOINT fn")
        try:
            item.result = item.fn(conn)
        except Exception as exc:
            conn.exec_driver_sql("ROLLBACK TO SAVEPOINT fn")
            conn.exec_driver_sql("RELEASE SAVEPOINT fn")
            self.cache.clear()
            item.error = exc
        else:
            conn.exec_driver_sql("RELEASE SAVEPOINT fn")
            if item.invalidate_cache:
                self.cache.clear()

    def _resolve(self, batch: list[_Item]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Item]] = {}
        for item in batch:
            if item.cfut is not None:
                if item.error is not None:
                    item.cfut.set_exception(item.error)
                else:
                    item.cfut.set_result(item.result)
            elif item.loop is not None:
                by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            # RuntimeError: that loop is closed, nobody is waiting any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_async, items)
