from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _fake_ingest import delete_event, snapshot_event

from watcher_common.outbox import Outbox, OutboxFull, OutboxLocked
from watcher_common.wire import MAX_INLINE_CONTENT, parse_event


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db")
    yield ob
    ob.close()


def test_put_is_durable_and_survives_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    events = [delete_event(i) for i in range(5)]
    for e in events:
        ob.put(e)
    assert ob.stats().events == 5
    ob.close()
    ob = Outbox(tmp_path / "o.db")
    batch = ob.next_batch(100, 1 << 20)
    assert [q.event_id for q in batch] == [e.event_id for e in events]
    assert parse_event(json.loads(batch[0].body)) == events[0]
    assert ob.stats().events == 5
    assert ob.stats().bytes == sum(q.size for q in batch)
    ob.close()


def test_wal_and_synchronous_full(outbox: Outbox) -> None:
    db = outbox._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_second_process_is_locked_out(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    with pytest.raises(OutboxLocked):
        Outbox(tmp_path / "o.db", lock_timeout_s=0.1)
    ob.close()
    Outbox(tmp_path / "o.db").close()  # free again once closed


def test_in_flight_events_are_not_returned_twice(outbox: Outbox) -> None:
    events = [delete_event(i) for i in range(10)]
    outbox.put_many(events)
    ids = [e.event_id for e in events]
    first = outbox.next_batch(4, 1 << 20)
    second = outbox.next_batch(100, 1 << 20)
    assert [q.event_id for q in first] == ids[:4]
    assert [q.event_id for q in second] == ids[4:]
    assert outbox.next_batch(100, 1 << 20) == []
    outbox.release([q.event_id for q in first])
    assert [q.event_id for q in outbox.next_batch(100, 1 << 20)] == ids[:4]
    outbox.ack(ids)
    assert outbox.stats().events == 0 and outbox.stats().bytes == 0
    assert outbox.in_flight() == 0


def test_max_bytes_but_always_one(outbox: Outbox) -> None:
    events = [delete_event(i) for i in range(5)]
    outbox.put_many(events)
    first = outbox.next_batch(1, 1 << 20)
    outbox.release([first[0].event_id])
    two = outbox.next_batch(100, first[0].size * 2 + 1)
    assert len(two) == 2
    outbox.release([q.event_id for q in two])
    assert len(outbox.next_batch(100, 1)) == 1  # an event larger than max_bytes still goes


def test_defer_hides_until_due(outbox: Outbox) -> None:
    e = delete_event()
    outbox.put(e)
    q = outbox.next_batch(10, 1 << 20)
    far = 2**62
    outbox.defer([q[0].event_id], far)
    assert outbox.next_batch(10, 1 << 20) == []
    assert outbox.next_due_us() == far
    outbox.defer([e.event_id], 0)
    again = outbox.next_batch(10, 1 << 20)
    assert again[0].attempts == 2


def test_inline_and_blob_content(outbox: Outbox) -> None:
    small = b"int main(void) { return 0; }\n"
    big = os.urandom(MAX_INLINE_CONTENT + 1)
    outbox.put(snapshot_event("a.c"), small)
    outbox.put(snapshot_event("b.bin"), big)
    outbox.put(snapshot_event("c.bin"), big)  # same content: one blob
    a, b, c = outbox.next_batch(10, 1 << 30)
    body_a = json.loads(a.body)
    assert base64.b64decode(body_a["content_b64"]) == small
    assert body_a["sha256"] == hashlib.sha256(small).hexdigest() and a.blob_sha is None
    sha = hashlib.sha256(big).hexdigest()
    assert b.blob_sha == c.blob_sha == sha and "content_b64" not in json.loads(b.body)
    assert json.loads(b.body)["size"] == len(big)
    assert outbox.get_blob(sha) == big
    assert outbox.stats().bytes == a.size + b.size + c.size + len(big)
    outbox.ack([b.event_id])
    assert outbox.get_blob(sha) == big  # c still needs it
    outbox.reject(c.event_id, "nope")
    assert outbox.get_blob(sha) is None
    assert outbox.stats().bytes == a.size


def test_content_rules(outbox: Outbox) -> None:
    with pytest.raises(ValueError):
        outbox.put(delete_event(), b"x")
    e = snapshot_event().model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ValueError):
        outbox.put(e, b"x")


def test_budget_raises_outbox_full_and_recovers(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=4000)
    stored = []
    with pytest.raises(OutboxFull, match="over budget"):
        for i in range(1000):
            e = delete_event(i)
            ob.put(e)
            stored.append(e.event_id)
    assert 0 < len(stored) < 1000
    assert ob.stats().bytes <= 4000
    with pytest.raises(OutboxFull):
        ob.put(snapshot_event(), os.urandom(MAX_INLINE_CONTENT + 1))
    assert ob.get_blob("0" * 64) is None
    ob.ack(stored)
    ob.put(delete_event())  # room again
    assert ob.stats().events == 1
    ob.close()


def test_put_many_is_atomic(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=2000)
    with pytest.raises(OutboxFull):
        ob.put_many([delete_event(i) for i in range(50)])
    assert ob.stats().events == 0
    ob.put_many([delete_event(i) for i in range(3)])
    assert ob.stats().events == 3
    ob.close()


def test_reput_same_event_id_is_harmless(outbox: Outbox) -> None:
    e = delete_event()
    outbox.put(e)
    outbox.put(e)
    assert outbox.stats().events == 1


def test_dead_is_bounded_and_inspectable(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", dead_max_events=3)
    events = [delete_event(i) for i in range(5)]
    ob.put_many(events)
    for e in events:
        ob.reject(e.event_id, f"bad {e.event_id}")
    assert ob.stats().dead == 3 and ob.stats().events == 0
    dead = ob.dead_events()
    assert [d.event_id for d in dead] == [e.event_id for e in reversed(events[2:])]
    assert dead[0].reason == f"bad {events[-1].event_id}"
    ob.close()
    assert Outbox(tmp_path / "o.db").stats().dead == 3


def test_threads_put_concurrently_with_reader(outbox: Outbox) -> None:
    notified = threading.Event()
    outbox.add_listener(notified.set)
    got: list[str] = []
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or outbox.stats().events:
            batch = outbox.next_batch(50, 1 << 20)
            got.extend(q.event_id for q in batch)
            outbox.ack([q.event_id for q in batch])

    reader = threading.Thread(target=consume)
    reader.start()
    ids: list[list[str]] = [[] for _ in range(4)]

    def produce(k: int) -> None:
        for i in range(100):
            e = delete_event(i)
            outbox.put(e)
            ids[k].append(e.event_id)

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    reader.join(10)
    assert notified.is_set()
    assert sorted(got) == sorted(i for part in ids for i in part)
    assert outbox.stats().events == 0


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True
    )
    return r.returncode == 0


def test_disk_full_is_outbox_full_not_a_crash(tmp_path: Path) -> None:
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("cannot mount a tmpfs here")
    try:
        ob = Outbox(mnt / "o.db", reserve_bytes=256 * 1024)
        assert (mnt / "o.db-reserve").stat().st_size == 256 * 1024
        stored = []
        with pytest.raises(OutboxFull, match="disk is full"):
            for _ in range(200):
                e = snapshot_event()
                ob.put(e, os.urandom(MAX_INLINE_CONTENT // 2))  # ~44 KB inline each
                stored.append(e.event_id)
        assert stored  # some fitted
        assert ob.stats().events == len(stored)
        # Still usable: what was stored is readable and can be acked.
        batch = ob.next_batch(1000, 1 << 30)
        assert [q.event_id for q in batch] == stored
        # Acks still work on the full disk (the reserve is given up if they need room),
        # so the sender can always drain it.
        ob.ack([q.event_id for q in batch[:10]])
        assert ob.stats().events == len(stored) - 10
        ob.close()
        reopened = Outbox(mnt / "o.db", reserve_bytes=256 * 1024)
        assert reopened.stats().events == len(stored) - 10
        reopened.ack([q.event_id for q in batch[10:]])
        reopened.put(snapshot_event(), b"after")  # empty again: takes new events
        reopened.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_ack_gives_up_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ob = Outbox(tmp_path / "o.db", reserve_bytes=64 * 1024)
    reserve = tmp_path / "o.db-reserve"
    assert reserve.stat().st_size == 64 * 1024
    e = delete_event()
    ob.put(e)
    real = ob._ack_locked
    calls = []

    def full_once(ids: list[str]) -> tuple[int, int]:
        calls.append(reserve.exists())
        if len(calls) == 1:
            raise OutboxFull("disk is full (simulated)")
        return real(ids)

    monkeypatch.setattr(ob, "_ack_locked", full_once)
    ob.ack([e.event_id])
    assert calls == [True, False]  # retried after the reserve was deleted
    assert ob.stats().events == 0
    monkeypatch.setattr(ob, "_ack_locked", real)
    # Re-created later once there is room (rate-limited; pretend the time has passed).
    ob._reserve_missing_since = -1e9
    ob.put(e2 := delete_event())
    ob.ack([e2.event_id])
    assert reserve.stat().st_size == 64 * 1024
    ob.close()


def test_full_small_disk_recovers_after_drain(tmp_path: Path) -> None:
    """A 4 MB disk filled while nothing is acked (the default 8 MiB reserve cannot fit
    there): once everything is acked, puts work again, more than once over."""
    mnt = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("cannot mount a tmpfs here")
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        ob = Outbox(mnt / "o.db")
        reserve = mnt / "o.db-reserve"
        assert 0 < reserve.stat().st_size <= 1 << 20  # a fraction of the free space
        for _round in range(3):
            stored = []
            with pytest.raises(OutboxFull, match="disk is full"):
                for _ in range(200):
                    e = snapshot_event()
                    ob.put(e, os.urandom(MAX_INLINE_CONTENT + 40_000))  # a blob each
                    stored.append(e.event_id)
            assert len(stored) >= 10
            batch = ob.next_batch(1000, 1 << 30)
            assert [q.event_id for q in batch] == stored
            for q in batch:  # one by one, as a slow sender would
                ob.ack([q.event_id])
            assert ob.stats().events == 0 and ob.stats().bytes == 0
            ob.put(snapshot_event(), os.urandom(MAX_INLINE_CONTENT + 40_000))
            ob.put(delete_event())
            assert ob.stats().events == 2
            ob.ack([q.event_id for q in ob.next_batch(10, 1 << 30)])
        wal = mnt / "o.db-wal"
        assert not wal.exists() or wal.stat().st_size <= 1 << 20
        ob.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
