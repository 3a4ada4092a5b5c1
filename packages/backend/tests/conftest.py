"""Backend test fixtures: every database test runs on SQLite *and* a real PostgreSQL.

The PostgreSQL server is started once per session from the binaries on this machine
(``initdb``/``pg_ctl`` on PATH or under /usr/lib/postgresql/*/bin), as the ``postgres``
user when we are root, on a free loopback port, with fsync off; a migrated template
database is made once.

Missing binaries FAIL the PostgreSQL tests (CI installs them; a skip would hide a missing
feature) unless ``WATCHER_TEST_NO_POSTGRES=1``.

Each test gets an empty, migrated database: SQLite a new file, PostgreSQL one shared
database truncated before the test (10x faster than CREATE DATABASE from a template);
if the truncate cannot get its locks, a fresh copy of the template is used instead.

Fixtures for other test modules: ``db_url`` (parametrized sqlite/postgresql), ``settings``,
``app``, ``client`` (TestClient with the lifespan running), ``agent_headers``,
``reader_headers``, ``admin_headers``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from watcher_backend.app import create_app
from watcher_backend.config import Settings
from watcher_backend.db.engine import make_engine, migrate
from watcher_backend.db.models import Base

AGENT_TOKEN = "test-agent-token-0123456789"
READER_TOKEN = "test-reader-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"

NO_POSTGRES_ENV = "WATCHER_TEST_NO_POSTGRES"
TEMPLATE_DB = "watcher_template"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bindir() -> Path | None:
    """Directory holding initdb and pg_ctl: PATH first, then the newest Debian install."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    for d in candidates:
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


class PgServer:
    """A throwaway PostgreSQL cluster for one test session."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="watcher-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = _free_port()
        self._names = itertools.count(1)
        self._shared: str | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        cmd = [*self._as_user, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}):\n"
                f"{proc.stdout}\n{proc.stderr}\n{log[-3000:]}"
            )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.base} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200 -c shared_buffers=64MB"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", "60", "-o", opts, "start",
        )  # fmt: skip

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def admin(self, sql: str) -> None:
        dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]  # test-only DDL, fixed names

    def create_template(self) -> None:
        self.admin(f"CREATE DATABASE {TEMPLATE_DB}")
        engine = make_engine(self.url(TEMPLATE_DB))
        migrate(engine)
        engine.dispose()  # CREATE DATABASE ... TEMPLATE needs no one connected to it

    def new_database(self, migrated: bool = True) -> str:
        name = f"t{next(self._names)}"
        template = f" TEMPLATE {TEMPLATE_DB}" if migrated else ""
        self.admin(f"CREATE DATABASE {name}{template}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def clean_database(self) -> str:
        """The shared test database, emptied (ids restart); a new copy if that fails."""
        if self._shared is not None:
            dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname={self._shared}"
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            try:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("SET lock_timeout = '3s'")
                    conn.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")  # type: ignore[arg-type]
                return self._shared
            except psycopg.Error:
                self.drop_database(self._shared)  # someone kept a transaction open
        self._shared = self.new_database()
        return self._shared


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    if os.environ.get(NO_POSTGRES_ENV) == "1":
        pytest.skip(f"{NO_POSTGRES_ENV}=1: PostgreSQL tests disabled")
    bindir = find_pg_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under "
            "/usr/lib/postgresql/*/bin. Install them (Debian: apt-get install postgresql; "
            f"scripts/install-deps.sh does) or set {NO_POSTGRES_ENV}=1 to skip these tests.",
            pytrace=False,
        )
    server = PgServer(bindir)
    server.start()
    try:
        server.create_template()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database URL (the app migrates it at start)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'watcher.db'}"
        return
    pg: PgServer = request.getfixturevalue("pg_server")
    yield pg.url(pg.clean_database())


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        db_url=db_url,
        agent_tokens=(AGENT_TOKEN,),
        reader_tokens=(READER_TOKEN,),
        admin_tokens=(ADMIN_TOKEN,),
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """TestClient with the lifespan (engine, migrations, writer) running."""
    with TestClient(app) as c:
        yield c


@pytest.fixture
def agent_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {AGENT_TOKEN}"}


@pytest.fixture
def reader_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {READER_TOKEN}"}


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
