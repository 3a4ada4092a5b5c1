"""An in-process cache of the old API's ``filename`` → storage path answers (SQLite only).

``compat_write.resolve_compat_filename`` reads the files that carry an ``@`` name on every
old-agent snapshot POST of a file in a subdirectory. Under a steady write load that read
cost ~150 µs of the event loop's CPU (a fresh WAL read snapshot, two GIL hand-offs with the
writer thread) for an answer that changes only when a file row with an ``@`` name is
created, renamed or deleted — once per file, not per save.

Staying correct: every connection of the engine gets TEMP triggers on ``files`` (insert of
an ``@`` name; update of the identifying columns; delete) and on the identity tables that
the lookup joins, calling back into Python. A change (in the writer's transaction, before
it commits) clears the cache and *blocks* it: no answer is served from or stored in it
until a barrier — a no-op run through the group-commit writer, which runs its items in
order — has come back, i.e. until the transaction that made the change has committed or
rolled back. An answer is stored only if no change happened while it was looked up.
So a cached answer is always the one the database gives for its committed state.

It relies on this process being the database's only writer, as in the SQLite deployment
(one backend; agents and seeding go through its API). PostgreSQL (possibly several backend
processes on one database) is never cached.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, event

from .writer import GroupCommitWriter

log = logging.getLogger(__name__)

_FUNCTION = "watcher_compat_names_changed"
_TRIGGERS = (
    # Only '@' names are ever looked up: a name without '@' is its own path.
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_files_ins AFTER INSERT ON main.files "
    f"WHEN instr(NEW.compat_name, '@') > 0 BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_files_upd AFTER UPDATE OF "
    "student_pk, assignment_id, path, compat_name ON main.files "
    f"BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_files_del AFTER DELETE ON main.files "
    f"BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_classes_upd AFTER UPDATE OF class_div "
    f"ON main.classes BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_classes_del AFTER DELETE ON main.classes "
    f"BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_students_upd AFTER UPDATE OF "
    f"class_id, student_id ON main.students BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_students_del AFTER DELETE ON main.students "
    f"BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_assignments_upd AFTER UPDATE OF "
    f"class_id, name ON main.assignments BEGIN SELECT {_FUNCTION}(); END",
    "CREATE TEMP TRIGGER IF NOT EXISTS watcher_cn_assignments_del AFTER DELETE ON "
    f"main.assignments BEGIN SELECT {_FUNCTION}(); END",
)
_MAX_ENTRIES = 100_000

Key = tuple[str, str, str, str]  # class_div, hw, student id, old-API filename


async def _noop_barrier(writer: GroupCommitWriter) -> None:
    def noop(_conn: Connection) -> None:
        return None

    await writer.run(noop)


class CompatNameCache:
    def __init__(self, writer: GroupCommitWriter, loop: asyncio.AbstractEventLoop) -> None:
        self._writer = writer
        self._loop = loop
        self._lock = threading.Lock()
        self._entries: dict[Key, str] = {}
        self._gen = 0  # database changes seen (by the triggers)
        self._blocked = False  # a change may not be committed yet
        self._barrier_requested = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._off = False  # a connection could not get the triggers: never cache again
        self.hits = 0

    def get(self, key: Key) -> str | None:
        if self._blocked or self._off:
            return None
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
        return found

    def token(self) -> int | None:
        """Taken before a lookup; None while blocked (the answer must not be stored)."""
        return None if self._blocked or self._off else self._gen

    def put(self, key: Key, path: str, token: int | None) -> None:
        with self._lock:
            if token is None or self._blocked or self._off or self._gen != token:
                return  # the database changed meanwhile: the answer may be stale
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = path

    # -- invalidation ----------------------------------------------------------------------

    def changed(self) -> None:
        """The triggers' callback (any thread, inside the changing transaction)."""
        try:
            with self._lock:
                self._gen += 1
                self._blocked = True
                self._entries.clear()
                if self._barrier_requested:
                    return
                self._barrier_requested = True
            self._loop.call_soon_threadsafe(self._start_barrier)
        except Exception:
            # Never fail the writer's statement. Blocked for good (no barrier will clear
            # it): lookups go to the database.
            log.debug("compat name cache: barrier not scheduled", exc_info=True)

    def _start_barrier(self) -> None:
        with self._lock:
            gen = self._gen
            self._barrier_requested = False
        task = self._loop.create_task(self._barrier(gen))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _barrier(self, gen: int) -> None:
        try:
            # Queued after the change's batch was taken: it completes after that commit.
            await _noop_barrier(self._writer)
        except Exception:
            return  # the writer stopped: stay blocked
        with self._lock:
            if self._gen == gen:
                self._blocked = False
                return
            if self._barrier_requested:
                return
            self._barrier_requested = True
        self._start_barrier()  # changed again since: wait for that one too

    # -- wiring ------------------------------------------------------------------------------

    def on_checkout(self, dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        if self._off or record.info.get("watcher_compat_names") is self:
            return
        try:
            dbapi_conn.create_function(_FUNCTION, 0, self._callback)
            cur = dbapi_conn.cursor()
            try:
                for sql in _TRIGGERS:
                    cur.execute(sql)
            finally:
                cur.close()
        except Exception as exc:
            # Never fail the checkout (it may be the writer's); a connection without the
            # triggers could change an answer unseen, so the cache is off for good.
            with self._lock:
                self._off = True
                self._entries.clear()
            log.warning("compat filename cache off: %s", type(exc).__name__)
            return
        record.info["watcher_compat_names"] = self

    def _callback(self) -> None:
        self.changed()


_CACHES: weakref.WeakKeyDictionary[Engine, CompatNameCache] = weakref.WeakKeyDictionary()


def install(engine: Engine, writer: GroupCommitWriter) -> CompatNameCache | None:
    """Cache the compat filename answers of ``engine`` (SQLite); call before the writer
    starts, in the event loop that serves requests (the cache is used from it only)."""
    if engine.dialect.name != "sqlite":
        return None
    cache = CompatNameCache(writer, asyncio.get_running_loop())
    # Every connection checked out from now on gets the triggers (the writer's included).
    event.listen(engine, "checkout", cache.on_checkout)
    _CACHES[engine] = cache
    return cache


def cache_for(engine: Engine) -> CompatNameCache | None:
    return _CACHES.get(engine)
