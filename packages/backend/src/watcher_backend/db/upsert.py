"""``INSERT ... ON CONFLICT DO NOTHING`` for SQLite and PostgreSQL.

Cheaper than catching IntegrityError (no exception, no savepoint rollback). Whether the
row was new is read from ``RETURNING`` (SQLAlchemy reports rowcount -1 for psycopg here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Insert, Table
from sqlalchemy.dialects import postgresql, sqlite

_cache: dict[tuple[str, str, tuple[str, ...]], Insert] = {}


def insert_ignore_stmt(dialect: str, table: Table, keys: Sequence[str]) -> Insert:
    key = (dialect, table.name, tuple(keys))
    stmt = _cache.get(key)
    if stmt is None:
        if dialect == "postgresql":
            ins: Insert = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        elif dialect == "sqlite":
            ins = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(keys))
        else:  # pragma: no cover - only the two supported databases
            raise NotImplementedError(f"unsupported database {dialect!r}")
        stmt = _cache[key] = ins.returning(table.c[keys[0]])
    return stmt


def insert_ignore(
    conn: Connection, table: Table, row: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """Insert ``row`` unless ``keys`` conflict; True when a row was inserted."""
    stmt = insert_ignore_stmt(conn.dialect.name, table, keys)
    return conn.execute(stmt, row).first() is not None
