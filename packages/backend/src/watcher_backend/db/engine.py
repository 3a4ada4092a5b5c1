"""Engine creation (SQLite or PostgreSQL) and Alembic migrations run at start."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_CACHE_KIB = 16 * 1024  # an upper bound per connection, not an allocation
SQLITE_POOL_SIZE = 40
SQLITE_MMAP_BYTES = 256 * 1024 * 1024
# Connection execution option set by the group-commit writer on its own connection.
WRITER_OPTION = "watcher_writer"


def normalize_url(db_url: str | URL) -> URL:
    """``postgresql://`` / ``postgres://`` use psycopg 3 (the driver we ship)."""
    url = make_url(db_url) if isinstance(db_url, str) else db_url
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def make_engine(db_url: str | URL, **kwargs: Any) -> Engine:
    url = normalize_url(db_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    # 20 kept: 16+ concurrent requests would otherwise close overflow connections on
    # return and reconnect (a PostgreSQL connection costs milliseconds).
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def _sqlite_engine(url: URL, **kwargs: Any) -> Engine:
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    if db and db != ":memory:":
        # Keep a connection per concurrent reader thread (anyio's default pool has 40):
        # with QueuePool's default 5 + 10 overflow, busy moments opened and closed a new
        # connection per request (connect + pragmas + schema parse: ~2-3 ms of CPU each).
        kwargs.setdefault("pool_size", SQLITE_POOL_SIZE)
        kwargs.setdefault("max_overflow", 10)
    connect_args = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's own transaction handling breaks SAVEPOINT; we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit is atomic and consistent, but the last commits before
        # an OS crash or power loss (not a process crash) may be lost. Acceptable here: the
        # agents' outbox keeps every event until the backend acks it, and a lost commit
        # is simply re-sent (event ids make that idempotent). FULL would fsync per commit.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # page cache per connection (negative = KiB), temp b-trees in memory, and reads
        # through mmap instead of read() copies.
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # The group-commit writer takes the write lock at BEGIN: it reads (dedupe, MAX(id)
        # for the ids it allocates) before it writes, and a deferred transaction could not
        # upgrade to a writer after another connection committed (SQLITE_BUSY_SNAPSHOT).
        immediate = conn.get_execution_options().get(WRITER_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config(engine: Engine | None = None) -> Config:
    """An ini-less Alembic config pointing at the migrations shipped in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
        cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    with engine.begin() as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
