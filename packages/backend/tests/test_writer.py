"""The group-commit writer: many requests per transaction, failures isolated."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from watcher_backend.db.engine import make_engine, migrate
from watcher_backend.writer import GroupCommitWriter, WriterStopped
from watcher_common.wire import Event, parse_event

_ids = itertools.count(1)


def snap(student: str, path: str, content: bytes | None) -> Event:
    data = content if content is not None else b"uploaded elsewhere"
    ev: dict[str, Any] = {
        "kind": "file.snapshot",
        "event_id": f"w-{next(_ids):08d}",
        "agent": "filemon",
        "agent_version": "t",
        "ts": "2026-01-01T00:00:00Z",
        "class_div": "os-1",
        "student_id": student,
        "assignment": "hw1",
        "path": path,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    if content is not None:
        ev["content_b64"] = base64.b64encode(content).decode()
    return parse_event(ev)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = make_engine(db_url)
    migrate(e)
    yield e
    e.dispose()


@pytest.fixture
def writer(engine: Engine) -> Iterator[GroupCommitWriter]:
    w = GroupCommitWriter(engine)
    w.start()
    yield w
    w.stop()


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


async def test_group_commit_batches_concurrent_requests(
    writer: GroupCommitWriter, engine: Engine
) -> None:
    n = 300
    events = [snap(f"2020{i % 7:05d}", f"f{i}.c", f"v{i}".encode()) for i in range(n)]
    results = await asyncio.gather(*(writer.submit([ev]) for ev in events))
    assert [r[0].status for r in results] == ["stored"] * n
    assert writer.events_applied == n
    assert writer.commits < n  # several requests shared a transaction
    assert count(engine, "snapshots") == n


async def test_failed_event_drops_cached_ids(writer: GroupCommitWriter, engine: Engine) -> None:
    # The first event creates class/student/file rows, then fails (its blob is missing):
    # the savepoint rollback removes those rows, so the cache must forget their ids.
    (r,) = await writer.submit([snap("202099999", "a.c", None)])
    assert r.status == "retry" and r.error == "blob not uploaded"
    assert count(engine, "students") == 0
    (r,) = await writer.submit([snap("202099999", "a.c", b"inline")])
    assert r.status == "stored", r
    assert count(engine, "students") == 1 and count(engine, "files") == 1


async def test_run_and_errors_in_run(writer: GroupCommitWriter, engine: Engine) -> None:
    def boom(conn: Connection) -> None:
        conn.exec_driver_sql(
            "INSERT INTO events (event_id, kind, received_us) VALUES ('x1234567', 'k', 1)"
        )
        raise ValueError("nope")

    def ok(conn: Connection) -> int:
        return int(conn.exec_driver_sql("SELECT 41 + 1").scalar_one())

    results = await asyncio.gather(
        writer.run(boom), writer.run(ok), writer.submit([snap("202000001", "b.c", b"b")]),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(results[0], ValueError)
    assert results[1] == 42
    assert results[2][0].status == "stored"  # type: ignore[index]
    assert count(engine, "events") == 1  # boom's insert was rolled back with its savepoint


async def test_transaction_failure_reaches_every_caller(
    writer: GroupCommitWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = writer._connection
    calls = 0

    def flaky() -> Connection:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OperationalError("connect", {}, Exception("database is down"))
        return real()

    monkeypatch.setattr(writer, "_connection", flaky)
    with pytest.raises(OperationalError):
        await writer.submit([snap("202000002", "c.c", b"c")])
    assert writer.rollbacks == 1
    (r,) = await writer.submit([snap("202000002", "c.c", b"c")])
    assert r.status == "stored"


def test_sync_api_and_stop(engine: Engine) -> None:
    w = GroupCommitWriter(engine)
    w.start()
    (r,) = w.submit_sync([snap("202000003", "d.c", b"d")])
    assert r.status == "stored"
    assert w.run_sync(lambda conn: 7) == 7
    w.stop()
    with pytest.raises(WriterStopped):
        w.submit_sync([snap("202000003", "d.c", b"d")])


async def test_database_error_isolates_the_event(writer: GroupCommitWriter, engine: Engine) -> None:
    # The set-wise insert of a group fails on one event (its snapshot row exists but its
    # events row was removed, so the duplicate check passes, and a unique index the test
    # adds refuses the second snapshot row): the group is redone one event per savepoint
    # and only that event is refused.
    a = snap("202000004", "a.c", b"a")
    (r,) = await writer.submit([a])
    assert r.status == "stored"
    with engine.begin() as conn:
        conn.execute(text("CREATE UNIQUE INDEX test_snapshots_event ON snapshots (event_id)"))
        conn.execute(text("DELETE FROM events WHERE event_id = :e"), {"e": a.event_id})
    b, c = snap("202000004", "b.c", b"b"), snap("202000005", "c.c", b"c")
    first, second = await asyncio.gather(writer.submit([b, a]), writer.submit([c]))
    assert [x.status for x in first] == ["stored", "rejected"]
    assert (first[1].error or "").startswith("database refused the event")
    assert [x.status for x in second] == ["stored"]
    assert count(engine, "snapshots") == 3 and count(engine, "files") == 3
    # the cache was rebuilt after the rollback: later events still find their rows
    (r,) = await writer.submit([snap("202000004", "b.c", b"b2")])
    assert r.status == "stored"
    assert count(engine, "files") == 3


async def test_duplicates_within_a_group(writer: GroupCommitWriter, engine: Engine) -> None:
    a = snap("202000006", "a.c", b"a")
    bad = snap("202000006", "x.c", None)  # blob missing: retry, so its id stays free
    res = await writer.submit([bad, a, a])
    assert [x.status for x in res] == ["retry", "stored", "duplicate"]
    assert count(engine, "snapshots") == 1
