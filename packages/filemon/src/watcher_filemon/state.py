"""What filemon last captured for each path, kept in memory and in a small SQLite file.

The file lives under SNAPSHOT_BASE next to the outbox, so a restart knows which versions
were already emitted and does not re-emit unchanged files; files changed while filemon
was down differ from this record and are emitted as ``reconciled``.

The record is written after the outbox has accepted the event: a crash in between can
only re-emit a version (harmless), never lose one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    sha256 TEXT,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cell_logs (
    path TEXT PRIMARY KEY,
    ino INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    head BLOB NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class FileState:
    sha256: str | None  # None for a too-large file (metadata only)
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int

    def same_stat(self, size: int, mtime_ns: int, ctime_ns: int, ino: int) -> bool:
        # ctime cannot be set from user space and moves on every write: a cheap, safe
        # "unchanged" test that lets a start-up scan skip reading 100k files.
        return (self.size, self.mtime_ns, self.ctime_ns, self.ino) == (
            size,
            mtime_ns,
            ctime_ns,
            ino,
        )


@dataclass(frozen=True, slots=True)
class CellLogState:
    """How far a notebook cell log has been read (cells.py)."""

    ino: int
    offset: int  # bytes of complete lines already turned into events
    head: bytes  # the file's first bytes then: a rewrite from scratch changes them


class StateDB:
    """path (relative to WATCH_ROOT) → FileState; writes are batched by ``flush``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._mem: dict[str, FileState] = {
            str(r[0]): FileState(r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in self._db.execute(
                "SELECT path, sha256, size, mtime_ns, ctime_ns, ino FROM files"
            )
        }
        self._dirty: dict[str, FileState | None] = {}
        self._cells: dict[str, CellLogState] = {
            str(r[0]): CellLogState(int(r[1]), int(r[2]), bytes(r[3]))
            for r in self._db.execute("SELECT path, ino, offset, head FROM cell_logs")
        }
        self._cells_dirty: dict[str, CellLogState | None] = {}

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, rel: str) -> FileState | None:
        return self._mem.get(rel)

    def set(self, rel: str, state: FileState) -> None:
        self._mem[rel] = state
        self._dirty[rel] = state

    def remove(self, rel: str) -> FileState | None:
        old = self._mem.pop(rel, None)
        if old is not None:
            self._dirty[rel] = None
        return old

    def paths(self) -> list[str]:
        return list(self._mem)

    def under(self, prefix: str) -> Iterator[str]:
        """Paths at or below the directory ``prefix`` ("" means everything)."""
        if not prefix:
            yield from list(self._mem)
            return
        pre = prefix + "/"
        for p in list(self._mem):
            if p.startswith(pre):
                yield p

    # ---- notebook cell logs ------------------------------------------------------------

    def cell_log(self, rel: str) -> CellLogState | None:
        return self._cells.get(rel)

    def set_cell_log(self, rel: str, state: CellLogState) -> None:
        self._cells[rel] = state
        self._cells_dirty[rel] = state

    def remove_cell_log(self, rel: str) -> CellLogState | None:
        old = self._cells.pop(rel, None)
        if old is not None:
            self._cells_dirty[rel] = None
        return old

    def cell_logs_under(self, prefix: str) -> list[str]:
        pre = prefix + "/"
        return [p for p in self._cells if p.startswith(pre)]

    def flush(self) -> None:
        if not self._dirty and not self._cells_dirty:
            return
        dirty, self._dirty = self._dirty, {}
        cells, self._cells_dirty = self._cells_dirty, {}
        cell_upserts = [(p, s.ino, s.offset, s.head) for p, s in cells.items() if s is not None]
        cell_deletes = [(p,) for p, s in cells.items() if s is None]
        upserts = [
            (p, s.sha256, s.size, s.mtime_ns, s.ctime_ns, s.ino)
            for p, s in dirty.items()
            if s is not None
        ]
        deletes = [(p,) for p, s in dirty.items() if s is None]
        db = self._db
        db.execute("BEGIN")
        try:
            if deletes:
                db.executemany("DELETE FROM files WHERE path = ?", deletes)
            if upserts:
                db.executemany(
                    "INSERT OR REPLACE INTO files (path, sha256, size, mtime_ns, ctime_ns, ino)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    upserts,
                )
            if cell_deletes:
                db.executemany("DELETE FROM cell_logs WHERE path = ?", cell_deletes)
            if cell_upserts:
                db.executemany(
                    "INSERT OR REPLACE INTO cell_logs (path, ino, offset, head)"
                    " VALUES (?, ?, ?, ?)",
                    cell_upserts,
                )
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (SQLITE_FULL) may already have ended the transaction: an
            # unconditional ROLLBACK would then raise and hide the real error.
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._dirty = {**dirty, **self._dirty}
            self._cells_dirty = {**cells, **self._cells_dirty}
            raise

    def close(self) -> None:
        self.flush()
        self._db.close()
