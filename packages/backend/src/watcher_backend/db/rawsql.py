"""Precompiled SQL on the raw DB-API cursor, for the writer's hot path.

SQLAlchemy Core costs ~50 µs of Python per ``execute`` (statement cache key, result
setup, events); the ingest target (≥ 20,000 events/s) leaves ~50 µs for a whole event.
So the writer keeps SQLAlchemy for the engine, pooling and transactions, and sends its
few fixed statements straight to the driver's cursor, inside SQLAlchemy's transaction.
Statements are written once with ``?`` placeholders and translated per dialect.

On SQLite, ``insert_many`` sends up to ``MAX_ROWS`` rows per multi-row ``VALUES``
statement instead of ``executemany``: the driver releases and re-takes the GIL around
every row it steps, and with the event loop thread busy parsing requests each re-take
waited for the loop's switch interval — the writer crawled (bench b: the backend was
idle ~25 % of the time) and paid for the thread switches. One step per 256 rows fixes
both. Row counts are split into powers of two, so each statement has at most 9 forms
(and the driver's statement cache keeps them compiled).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

from sqlalchemy import Connection

MAX_ROWS = 256  # rows per multi-row INSERT (x 32 columns at most: far below the limits)


class RawSql:
    """The driver cursor of one connection plus dialect-translated statements."""

    def __init__(self, conn: Connection) -> None:
        self.dialect = conn.dialect.name
        self.dbapi_conn = conn.connection.dbapi_connection
        assert self.dbapi_conn is not None
        self.cur: Any = self.dbapi_conn.cursor()
        self._sqlite = self.dialect == "sqlite"
        self._sql: dict[str, str] = {}

    def sql(self, text: str) -> str:
        out = self._sql.get(text)
        if out is None:
            out = self._sql[text] = text if self._sqlite else text.replace("?", "%s")
        return out

    def execute(self, text: str, params: Sequence[Any] = ()) -> Any:
        cur = self.cur
        cur.execute(self.sql(text), params)
        return cur

    def executemany(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        self.cur.executemany(self.sql(text), rows)

    def insert_many(
        self, text: str, rows: Sequence[Sequence[Any]], shared: Sequence[Any] = ()
    ) -> None:
        """``executemany`` for an ``INSERT ... VALUES (?, ...) [ON CONFLICT ...]``.

        ``shared``: the values of the statement's last ``len(shared)`` columns, the same
        for every row (``rows`` hold the other columns). On SQLite they are bound once per
        statement, not once per row: the driver's per-parameter cost (~0.3 µs) was a
        quarter of a snapshot row's insert.
        """
        if not self._sqlite:
            # psycopg pipelines executemany already: one round trip for all rows
            if shared:
                rows = [(*r, *shared) for r in rows]
            self.cur.executemany(self.sql(text), rows)
            return
        cur, n, k = self.cur, len(rows), 0
        while k < n:
            m = min(MAX_ROWS, 1 << ((n - k).bit_length() - 1))  # largest power of 2 that fits
            params = list(shared)
            params.extend(chain.from_iterable(rows[k : k + m]))
            cur.execute(self._multi(text, m, len(shared)), params)
            k += m

    def _multi(self, text: str, m: int, n_shared: int) -> str:
        key = f"{m}:{n_shared}:{text}"
        out = self._sql.get(key)
        if out is None:
            head, rest = text.split("VALUES (", 1)  # the statement's one row of ?s
            params, tail = rest.split(")", 1)
            out = self._sql[key] = f"{head}VALUES {_numbered_rows(params, m, n_shared)}{tail}"
        return out

    def scalar(self, text: str, params: Sequence[Any] = ()) -> Any:
        row = self.execute(text, params).fetchone()
        return None if row is None else row[0]

    def insert_id(self, text: str, params: Sequence[Any]) -> int:
        """Run an ``INSERT`` and return the new row's integer primary key ``id``."""
        if self._sqlite:
            return int(self.execute(text, params).lastrowid)
        row = self.execute(text + " RETURNING id", params).fetchone()
        return int(row[0])

    def insert_ignore(self, text: str, params: Sequence[Any]) -> bool:
        """Run an ``INSERT ... ON CONFLICT DO NOTHING``; True when a row was added."""
        return int(self.execute(text, params).rowcount) == 1


def _numbered_rows(params: str, m: int, n_shared: int) -> str:
    """``m`` rows of ``params`` (``?, ?, ...``) whose last ``n_shared`` placeholders are
    ``?1 .. ?n_shared`` in every row; each row's own placeholders are numbered after them
    in order, so the parameters are ``[*shared, *row_0, *row_1, ...]``."""
    width = params.count("?")
    own = width - n_shared
    if own < 1 or params.replace("?", "").replace(",", "").strip():
        raise ValueError(f"not a row of plain placeholders: ({params})")
    shared = [f"?{j}" for j in range(1, n_shared + 1)]
    rows = []
    for r in range(m):
        base = n_shared + r * own
        rows.append("(" + ", ".join([*(f"?{base + j}" for j in range(1, own + 1)), *shared]) + ")")
    return ", ".join(rows)


def raw_for(conn: Connection, holder: dict[str, Any]) -> RawSql:
    """The ``RawSql`` of ``conn``, kept in ``holder`` while the DB-API connection lives."""
    raw: RawSql | None = holder.get("raw")
    if raw is None or raw.dbapi_conn is not conn.connection.dbapi_connection:
        raw = holder["raw"] = RawSql(conn)
    return raw
