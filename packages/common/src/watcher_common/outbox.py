"""The durable outbox: an event counts as captured once ``put()`` has returned.

One SQLite file per agent process (WAL, ``synchronous=FULL``: the commit is fsynced before
``put`` returns). The sender drains it in batches; rows are deleted only when the backend
has answered ``stored``/``duplicate`` (``ack``) or refused them for good (``reject`` →
the bounded ``dead`` table). Anything not acked survives a crash and is re-sent by the
next process; the backend is idempotent by ``event_id``.

Large file contents are kept once in ``blobs`` (content-addressed) and deleted when no
queued event needs them any more. The outbox has a byte budget: ``put`` raises
``OutboxFull`` rather than filling the disk, and a really full disk (SQLITE_FULL) is
reported the same way, never as a crash.

The connection uses ``locking_mode=EXCLUSIVE``: a second process opening the same file
gets ``OutboxLocked`` (two senders would only duplicate work), and WAL then needs no
shared-memory file, which keeps it usable on network volumes. Give each node its own file.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from watcher_common.wire import MAX_INLINE_CONTENT, Event, FileSnapshot

_T = TypeVar("_T")

DEFAULT_BUDGET_BYTES = 1 << 30
DEFAULT_DEAD_MAX_EVENTS = 10_000
DEFAULT_DEAD_MAX_BYTES = 64 << 20
# Space held back (a plain file next to the database) so acks can proceed on a full disk.
DEFAULT_RESERVE_BYTES = 8 << 20
# The reserve never takes more than 1/N of the space free when the outbox opens.
_RESERVE_FREE_FRACTION = 4
_SQLITE_FULL = 13
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_DELETE_CHUNK = 500  # ids per DELETE ... IN (...): below SQLite's 999-variable floor

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try_us INTEGER NOT NULL DEFAULT 0,
    blob_sha TEXT
);
CREATE INDEX IF NOT EXISTS events_next_try ON events(next_try_us);
CREATE INDEX IF NOT EXISTS events_blob ON events(blob_sha) WHERE blob_sha IS NOT NULL;
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    size INTEGER NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    dead_us INTEGER NOT NULL
);
"""


class OutboxError(Exception):
    """The outbox could not do what was asked (see subclasses)."""


class OutboxFull(OutboxError):
    """Over the byte budget, or the disk itself is full; the event was NOT stored."""


class _DiskFull(OutboxFull):
    """SQLITE_FULL (not the byte budget): a checkpoint may free room."""


class _Requeued(Exception):
    """A bulk insert met an event_id already queued (rolled back, redone row by row)."""


_INSERT_EVENT = (
    "INSERT OR IGNORE INTO events (event_id, kind, body, size, created_us, blob_sha)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


class OutboxLocked(OutboxError):
    """Another process holds this outbox file."""


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event its agent has already serialized as wire JSON (compact, UTF-8, ``None``
    fields left out), stored as is: for hot paths where building and dumping the pydantic
    model would cost more than the rest of the event's handling. The agent guarantees the
    body validates as ``kind`` (its tests check it against the wire model); no content."""

    event_id: str
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    seq: int
    event_id: str
    kind: str
    body: bytes  # the event as compact JSON, ready to splice into a request
    size: int
    attempts: int
    blob_sha: str | None  # set when the outbox holds content the backend needs first


@dataclass(frozen=True, slots=True)
class DeadEvent:
    event_id: str
    kind: str
    body: bytes
    reason: str
    attempts: int
    dead_us: int


@dataclass(frozen=True, slots=True)
class OutboxStats:
    events: int
    bytes: int  # queued event bodies + the blobs they need
    oldest_age_s: float  # 0 when empty
    dead: int


def _now_us() -> int:
    return time.time_ns() // 1000


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) == _SQLITE_FULL:
        return True
    return "database or disk is full" in str(exc)


@dataclass(frozen=True, slots=True)
class _Prepared:
    event_id: str
    kind: str
    body: bytes
    blob: tuple[str, bytes] | None


def prepare_event(event: Event, content: bytes | None) -> tuple[Event, tuple[str, bytes] | None]:
    """Attach ``content`` to a file snapshot: inline (base64) if small, else as a blob.

    Returns the event to store and the ``(sha256, data)`` blob it needs, if any.
    """
    if content is None:
        return event, None
    if not isinstance(event, FileSnapshot):
        raise ValueError(f"content given for a {event.kind} event")
    sha = hashlib.sha256(content).hexdigest()
    if event.sha256 is not None and event.sha256 != sha:
        raise ValueError("event sha256 does not match the content")
    if len(content) <= MAX_INLINE_CONTENT:
        inline = base64.b64encode(content).decode("ascii")
        return event.model_copy(
            update={"sha256": sha, "size": len(content), "content_b64": inline}
        ), None
    updated = event.model_copy(update={"sha256": sha, "size": len(content), "content_b64": None})
    return updated, (sha, content)


class Outbox:
    """Thread-safe durable queue of wire events (one connection, one lock)."""

    def __init__(
        self,
        path: str | Path,
        *,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        dead_max_events: int = DEFAULT_DEAD_MAX_EVENTS,
        dead_max_bytes: int = DEFAULT_DEAD_MAX_BYTES,
        lock_timeout_s: float = 5.0,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    ) -> None:
        self.path = Path(path)
        self.reserve_bytes = reserve_bytes
        self._reserve_path = self.path.with_name(self.path.name + "-reserve")
        self._reserve_missing_since: float | None = None
        self._disk_was_full = False  # SQLITE_FULL seen since the queue was last empty
        self.budget_bytes = budget_bytes
        self.dead_max_events = dead_max_events
        self.dead_max_bytes = dead_max_bytes
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._listeners: list[Callable[[], None]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            str(self.path),
            timeout=lock_timeout_s,
            isolation_level=None,  # we issue BEGIN/COMMIT ourselves
            check_same_thread=False,  # guarded by self._lock
        )
        try:
            self._open()
        except sqlite3.OperationalError as exc:
            self._db.close()
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc):
                raise OutboxLocked(f"outbox {self.path} is in use by another process") from exc
            if _is_full(exc):
                raise OutboxFull(f"cannot open outbox {self.path}: disk is full") from exc
            raise

    def _open(self) -> None:
        db = self._db
        # Order matters: EXCLUSIVE before the first WAL access means no -shm file.
        db.execute("PRAGMA locking_mode=EXCLUSIVE")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        # Debian builds with SECURE_DELETE: every freed page would be zeroed through the
        # WAL, so an ack could need as much new space as it frees. FAST avoids the extra I/O.
        db.execute("PRAGMA secure_delete=FAST")
        # Taking the write lock now makes a second process fail at open, not mid-run.
        db.execute("BEGIN IMMEDIATE")
        try:
            # Not executescript(): it would COMMIT first and drop the lock we just took.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # The reserve is at most a fraction of the free space, so it exists on small disks
        # too (an 8 MiB reserve on a 4 MB volume never would, and the WAL could then grow
        # to fill the disk before its first checkpoint).
        self._reserve_size = self._pick_reserve_size()
        # Keep the WAL well below the reserve, so giving the reserve up always leaves
        # enough room to checkpoint it (see _retry_full); and truncate it back to that
        # size after each checkpoint, so space a burst took is handed back.
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        pages = max(16, min(1000, self._reserve_size // page_size // 2))
        db.execute(f"PRAGMA wal_autocheckpoint={pages}")
        db.execute(f"PRAGMA journal_size_limit={pages * page_size}")
        if not self._make_reserve():
            self._reserve_missing_since = time.monotonic()
        row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events").fetchone()
        self._events = int(row[0])
        event_bytes = int(row[1])
        blob_bytes = db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
        self._bytes = event_bytes + int(blob_bytes)
        row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM dead").fetchone()
        self._dead = int(row[0])
        self._dead_bytes = int(row[1])

    # ---- plumbing -------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; disk-full becomes OutboxFull. Caller holds the lock."""
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_full(exc):
                self._disk_was_full = True
                self._shrink_wal()
                raise _DiskFull(f"outbox disk is full ({self.path.parent})") from exc
            raise

    def _shrink_wal(self) -> None:
        """Best effort on a full disk: fold the WAL into the database and restart it, so
        the next writes reuse the WAL file's space instead of growing it. (TRUNCATE would
        hand that space back to the filesystem, where anything else may take it.)"""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _retry_full(self, fn: Callable[[], _T]) -> _T:
        """Run a write that frees space (ack/reject/defer), even on a full disk.

        Deleting rows still needs WAL space; when the disk is full we give up the reserve
        file (if there is one), fold the WAL into the database and try once more. Without
        this an outbox on a full disk could never shrink again: the sender would resend the
        same events forever.
        """
        try:
            result = fn()
        except OutboxFull:
            self._checkpoint_truncate(remake_reserve=False)
            result = fn()
        self._restore_reserve()
        return result

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _pick_reserve_size(self) -> int:
        """min(reserve_bytes, a quarter of the space free now, counting our own reserve)."""
        if self.reserve_bytes <= 0:
            return 0
        free = self._free_bytes()
        if free is None:
            return self.reserve_bytes
        with contextlib.suppress(OSError):
            free += self._reserve_path.stat().st_size
        return max(0, min(self.reserve_bytes, free // _RESERVE_FREE_FRACTION))

    def _make_reserve(self) -> bool:
        size = self._reserve_size
        if size <= 0:
            return True
        path = self._reserve_path
        try:
            if path.exists() and path.stat().st_size >= size:
                return True
            with open(path, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, size)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise
                    chunk = bytes(64 * 1024)  # filesystem without fallocate (e.g. old NFS)
                    for _ in range(0, size, len(chunk)):
                        f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            return True
        except OSError:
            path.unlink(missing_ok=True)
            return False

    def _release_reserve(self) -> bool:
        try:
            self._reserve_path.unlink()
        except FileNotFoundError:
            return False
        self._reserve_missing_since = time.monotonic()
        return True

    def _restore_reserve(self) -> None:
        """Re-create the reserve once there is room again (at most every 30 s)."""
        since = self._reserve_missing_since
        if since is None or time.monotonic() - since < 30:
            return
        self._shrink_wal()
        self._reserve_missing_since = None if self._make_reserve() else time.monotonic()

    def _checkpoint_truncate(self, *, remake_reserve: bool) -> None:
        """Fold the whole WAL into the database and cut the WAL file to zero (best effort).

        Needs room for the database to grow by what the WAL holds beyond its end: that is
        what the reserve is for, so it is given up first. With ``remake_reserve`` it is
        taken back at once if the truncated WAL left room (a put must not eat the space
        that lets acks proceed on a full disk).
        """
        released = self._release_reserve()
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        if remake_reserve and (released or self._reserve_missing_since is not None):
            self._reserve_missing_since = None if self._make_reserve() else time.monotonic()

    def _compact_if_drained(self, removed: int) -> None:
        """Queue just emptied after a full disk: hand the space back (caller holds the lock).

        The acked data still fills the database file as free pages (and the WAL), so new
        puts would find the disk as full as before. An empty queue is cheap to VACUUM; the
        TRUNCATE checkpoints then shrink both files, and the reserve is taken back.
        """
        if not removed or self._events or not self._disk_was_full:
            return
        self._disk_was_full = False
        self._checkpoint_truncate(remake_reserve=False)
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        self._reserve_missing_since = None if self._make_reserve() else time.monotonic()

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs in the putting thread after each committed put (keep it cheap)."""
        with self._lock:
            self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._listeners:
                self._listeners.remove(callback)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- producer side --------------------------------------------------------------

    # put/put_many also take EncodedEvent (agents check for this flag)
    accepts_encoded = True

    def put(self, event: Event | EncodedEvent, content: bytes | None = None) -> None:
        """Store one event durably (content: see ``prepare_event``). Raises OutboxFull."""
        self.put_many([(event, content)])

    def put_many(
        self,
        items: Iterable[Event | EncodedEvent | tuple[Event | EncodedEvent, bytes | None]],
    ) -> None:
        """Store several events in one transaction: all of them or none."""
        prepared: list[_Prepared] = []
        for item in items:
            event, content = item if isinstance(item, tuple) else (item, None)
            if isinstance(event, EncodedEvent):
                if content is not None:
                    raise ValueError("content given with an encoded event")
                prepared.append(_Prepared(event.event_id, event.kind, event.body, None))
                continue
            ready, blob = prepare_event(event, content)
            body = ready.model_dump_json(exclude_none=True).encode()
            prepared.append(_Prepared(ready.event_id, ready.kind, body, blob))
        if not prepared:
            return
        with self._lock:
            try:
                self._put_locked(prepared)
            except _DiskFull:
                # All the space may sit in the WAL (data since acked, not yet
                # checkpointed): give up the reserve, checkpoint, and try once more.
                self._checkpoint_truncate(remake_reserve=True)
                self._put_locked(prepared)
            self._restore_reserve()
            listeners = list(self._listeners)
        for callback in listeners:
            callback()

    def _put_locked(self, prepared: list[_Prepared]) -> None:
        if len(prepared) > 1 and all(p.blob is None for p in prepared):
            try:
                self._put_rows(prepared, bulk=True)
                return
            except _Requeued:
                pass  # rolled back: counted row by row below
        self._put_rows(prepared, bulk=False)

    def _put_rows(self, prepared: list[_Prepared], *, bulk: bool) -> None:
        now = _now_us()
        with self._tx() as db:
            added_events = 0
            added_bytes = 0
            if bulk:
                # one statement for the whole batch (no blobs): a few us less per event
                cur = db.executemany(
                    _INSERT_EVENT,
                    [(p.event_id, p.kind, p.body, len(p.body), now, None) for p in prepared],
                )
                if cur.rowcount != len(prepared):
                    raise _Requeued  # an event_id already queued: which one is counted below
                added_events = len(prepared)
                added_bytes = sum(len(p.body) for p in prepared)
            for p in () if bulk else prepared:
                cur = db.execute(
                    _INSERT_EVENT,
                    (p.event_id, p.kind, p.body, len(p.body), now, p.blob[0] if p.blob else None),
                )
                if cur.rowcount == 0:
                    continue  # same event_id already queued: harmless re-put
                added_events += 1
                added_bytes += len(p.body)
                if p.blob is not None:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO blobs (sha256, data, size) VALUES (?, ?, ?)",
                        (p.blob[0], p.blob[1], len(p.blob[1])),
                    )
                    added_bytes += len(p.blob[1]) * cur.rowcount
            if added_bytes and self._bytes + added_bytes > self.budget_bytes:
                # Rolled back by _tx; checked after the inserts so dedup is accounted exactly.
                raise OutboxFull(
                    f"outbox over budget: {self._bytes} queued + {added_bytes} new bytes"
                    f" > {self.budget_bytes}"
                )
        self._events += added_events
        self._bytes += added_bytes

    # ---- sender side ----------------------------------------------------------------

    def next_batch(self, max_events: int, max_bytes: int) -> list[QueuedEvent]:
        """The oldest due events not already in flight, marked in flight.

        At least one event is returned if any is due, even when it alone exceeds
        ``max_bytes``. Each returned event stays in flight (never returned again) until
        ``ack``, ``reject``, ``defer`` or ``release`` names it.
        """
        out: list[QueuedEvent] = []
        total = 0
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, event_id, kind, body, size, attempts, blob_sha FROM events"
                " WHERE next_try_us <= ? ORDER BY seq",
                (_now_us(),),
            )
            for seq, event_id, kind, body, size, attempts, blob_sha in cur:
                if event_id in self._in_flight:
                    continue
                if out and total + size > max_bytes:
                    break
                out.append(QueuedEvent(seq, event_id, kind, body, size, attempts, blob_sha))
                total += size
                if len(out) >= max_events:
                    break
            cur.close()
            self._in_flight.update(e.event_id for e in out)
        return out

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def get_blob(self, sha256: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM blobs WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else bytes(row[0])

    def next_due_us(self) -> int | None:
        """When the earliest deferred event becomes due (None if nothing is queued)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(next_try_us) FROM events").fetchone()
        return None if row[0] is None else int(row[0])

    def release(self, event_ids: Iterable[str]) -> None:
        """Return in-flight events to the queue unchanged (their request failed)."""
        with self._lock:
            self._in_flight.difference_update(event_ids)

    def ack(self, event_ids: Sequence[str]) -> None:
        """The backend has these (stored or duplicate): forget them."""
        if not event_ids:
            return
        with self._lock:
            try:
                removed, freed = self._retry_full(lambda: self._ack_locked(event_ids))
            finally:
                self._in_flight.difference_update(event_ids)
            self._events -= removed
            self._bytes -= freed
            self._compact_if_drained(removed)

    def _ack_locked(self, event_ids: Sequence[str]) -> tuple[int, int]:
        with self._tx() as db:
            return self._delete_locked(db, event_ids)

    def reject(self, event_id: str, reason: str) -> None:
        self.reject_many([(event_id, reason)])

    def reject_many(self, items: Sequence[tuple[str, str]]) -> None:
        """Move permanently refused events to ``dead`` (kept for inspection, bounded)."""
        if not items:
            return
        ids = [event_id for event_id, _ in items]
        with self._lock:
            try:
                removed, freed, dead_added, dead_bytes, trimmed, trimmed_bytes = self._retry_full(
                    lambda: self._reject_locked(items)
                )
            finally:
                self._in_flight.difference_update(ids)
            self._events -= removed
            self._bytes -= freed
            self._dead += dead_added - trimmed
            self._dead_bytes += dead_bytes - trimmed_bytes
            self._compact_if_drained(removed)

    def _reject_locked(
        self, items: Sequence[tuple[str, str]]
    ) -> tuple[int, int, int, int, int, int]:
        now = _now_us()
        dead_added = 0
        dead_bytes = 0
        with self._tx() as db:
            for event_id, reason in items:
                row = db.execute(
                    "INSERT INTO dead (event_id, kind, body, size, reason, attempts,"
                    " created_us, dead_us) SELECT event_id, kind, body, size, ?,"
                    " attempts, created_us, ? FROM events WHERE event_id = ? RETURNING size",
                    (reason[:2000], now, event_id),
                ).fetchone()
                if row is not None:
                    dead_added += 1
                    dead_bytes += int(row[0])
            removed, freed = self._delete_locked(db, [event_id for event_id, _ in items])
            trimmed, trimmed_bytes = self._trim_dead_locked(
                db, self._dead + dead_added, self._dead_bytes + dead_bytes
            )
        return removed, freed, dead_added, dead_bytes, trimmed, trimmed_bytes

    def defer(self, event_ids: Sequence[str], until_us: int) -> None:
        """Keep these queued but not due before ``until_us`` (backend said ``retry``)."""
        if not event_ids:
            return
        with self._lock:
            try:
                self._retry_full(lambda: self._defer_locked(event_ids, until_us))
            finally:
                self._in_flight.difference_update(event_ids)

    def _defer_locked(self, event_ids: Sequence[str], until_us: int) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE events SET next_try_us = ?, attempts = attempts + 1 WHERE event_id = ?",
                [(until_us, event_id) for event_id in event_ids],
            )

    def _delete_locked(self, db: sqlite3.Connection, event_ids: Sequence[str]) -> tuple[int, int]:
        removed = 0
        freed = 0
        shas: set[str] = set()
        # one statement per chunk, not per event: an ack of a whole batch is the common case
        for i in range(0, len(event_ids), _DELETE_CHUNK):
            chunk = list(event_ids[i : i + _DELETE_CHUNK])
            marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound
            sql = f"DELETE FROM events WHERE event_id IN ({marks}) RETURNING size, blob_sha"  # noqa: S608
            for size, blob_sha in db.execute(sql, chunk).fetchall():
                removed += 1
                freed += int(size)
                if blob_sha is not None:
                    shas.add(str(blob_sha))
        for sha in shas:
            row = db.execute(
                "DELETE FROM blobs WHERE sha256 = ? AND NOT EXISTS"
                " (SELECT 1 FROM events WHERE blob_sha = ?) RETURNING size",
                (sha, sha),
            ).fetchone()
            if row is not None:
                freed += int(row[0])
        return removed, freed

    def _trim_dead_locked(self, db: sqlite3.Connection, count: int, size: int) -> tuple[int, int]:
        trimmed = 0
        trimmed_bytes = 0
        while count - trimmed > self.dead_max_events or size - trimmed_bytes > self.dead_max_bytes:
            row = db.execute(
                "DELETE FROM dead WHERE seq = (SELECT MIN(seq) FROM dead) RETURNING size"
            ).fetchone()
            if row is None:
                break
            trimmed += 1
            trimmed_bytes += int(row[0])
        return trimmed, trimmed_bytes

    # ---- inspection -----------------------------------------------------------------

    def stats(self) -> OutboxStats:
        with self._lock:
            row = self._db.execute("SELECT created_us FROM events ORDER BY seq LIMIT 1").fetchone()
            oldest = 0.0 if row is None else max(0.0, (_now_us() - int(row[0])) / 1e6)
            return OutboxStats(self._events, self._bytes, oldest, self._dead)

    def dead_events(self, limit: int = 100) -> list[DeadEvent]:
        """The most recent permanently rejected events, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, kind, body, reason, attempts, dead_us FROM dead"
                " ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadEvent(r[0], r[1], bytes(r[2]), r[3], int(r[4]), int(r[5])) for r in rows]
