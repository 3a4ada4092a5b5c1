"""SQLite WAL checkpoints run on their own thread, not in the writer's commits."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

from sqlalchemy import text

from watcher_backend.db.checkpoint import BACKSTOP_PAGES, DEFAULT_PAGES
from watcher_backend.db.engine import make_engine, migrate
from watcher_backend.writer import GroupCommitWriter
from watcher_common.wire import Event, parse_event


def _snap(i: int) -> Event:
    data = f"version {i}\n".encode() + os.urandom(2048)  # distinct, incompressible pages
    return parse_event(
        {
            "kind": "file.snapshot",
            "event_id": f"ckpt-{i:08d}",
            "agent": "filemon",
            "agent_version": "t",
            "ts": "2026-01-01T00:00:00Z",
            "class_div": "os-1",
            "student_id": "202012345",
            "assignment": "hw1",
            "path": f"f{i % 7}.c",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content_b64": base64.b64encode(data).decode(),
        }
    )


def test_checkpoints_happen_off_the_writer_and_the_wal_is_reused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/c.db")
    migrate(engine)
    writer = GroupCommitWriter(engine)
    assert writer.checkpointer is not None
    writer.checkpointer.min_interval_s = 0.0
    writer.start()
    try:

        async def ingest() -> None:
            for k in range(0, 3000, 300):
                results = await writer.submit([_snap(i) for i in range(k, k + 300)])
                assert {r.status for r in results} == {"stored"}
                await asyncio.sleep(0.05)  # let the checkpointer catch up between commits

        asyncio.run(ingest())
        conn = writer._conn
        assert conn is not None
        # the writer's own autocheckpoint is only a backstop while the thread runs
        dbapi_conn = conn.connection.driver_connection
        assert dbapi_conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (BACKSTOP_PAGES,)
    finally:
        writer.stop()
    assert writer.checkpointer.checkpoints >= 2
    # ~6 MB went through the WAL; checkpoints let the writer restart it from the top, so
    # it stays far below what the writer alone would let it grow to (BACKSTOP_PAGES).
    assert os.path.getsize(f"{tmp_path}/c.db-wal") < 4 * 1024 * 1024
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM snapshots")).scalar() == 3000
    # the writer's connection went back to the pool with SQLite's default again: check
    # every pooled connection (more checked out at once than the pool has made so far)
    held = [engine.connect() for _ in range(6)]
    try:
        for c in held:
            assert c.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == DEFAULT_PAGES
    finally:
        for c in held:
            c.close()
    engine.dispose()


def test_no_checkpointer_for_postgresql_or_memory() -> None:
    for url in ("sqlite://", "postgresql+psycopg://u@127.0.0.1:1/x"):
        engine = make_engine(url)
        assert GroupCommitWriter(engine).checkpointer is None
        engine.dispose()


def test_bulk_ingest_spaces_checkpoints_out(tmp_path: Path) -> None:
    """After a checkpoint that covered a bulk commit (agents' batches) the checkpointer
    waits the longer interval; after small commits (compat writes) the short one."""
    from watcher_backend.db.checkpoint import BULK_EVENTS

    def checkpoints_during(commit_size: int, commits: int) -> int:
        engine = make_engine(f"sqlite:///{tmp_path}/b{commit_size}.db")
        migrate(engine)
        writer = GroupCommitWriter(engine)
        cp = writer.checkpointer
        assert cp is not None
        cp.min_interval_s, cp.bulk_interval_s = 0.0, 3.0
        writer.start()
        try:

            async def ingest() -> int:
                for k in range(commits):
                    base = k * commit_size
                    evs = [_snap(i) for i in range(base, base + commit_size)]
                    assert {r.status for r in await writer.submit(evs)} == {"stored"}
                    await asyncio.sleep(0.05)
                return cp.checkpoints

            return asyncio.run(ingest())
        finally:
            writer.stop()
            engine.dispose()

    assert checkpoints_during(10, 6) >= 3  # small commits: checkpointed right away
    assert checkpoints_during(BULK_EVENTS, 3) == 1  # then the bulk interval
