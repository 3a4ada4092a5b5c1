from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).parent))

from _fake_ingest import TOKEN, FakeIngest, delete_event, http_date, snapshot_event

from watcher_common.outbox import Outbox
from watcher_common.sender import Sender, parse_retry_after
from watcher_common.wire import MAX_INLINE_CONTENT

HERE = Path(__file__).parent


@pytest.fixture
def server() -> Iterator[FakeIngest]:
    fake = FakeIngest().start()
    yield fake
    fake.unblock.set()
    fake.stop()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db")
    yield ob
    ob.close()


def make_sender(outbox: Outbox, server: FakeIngest, **kw: Any) -> Sender:
    opts: dict[str, Any] = {
        "linger_s": 0.01,
        "backoff_base_s": 0.02,
        "backoff_cap_s": 0.1,
        "idle_poll_s": 0.2,
        "registry": CollectorRegistry(),
    }
    opts.update(kw)
    return Sender(outbox, server.url, TOKEN, **opts)


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Sender], asyncio.Task[None]]]:
    tasks: list[tuple[Sender, asyncio.Task[None]]] = []

    def start(sender: Sender) -> asyncio.Task[None]:
        task = asyncio.create_task(sender.run_forever())
        tasks.append((sender, task))
        return task

    yield start
    for sender, task in tasks:
        await sender.stop(0.5)
        await asyncio.wait_for(task, 2)


async def until(pred: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def sample(sender: Sender, name: str, **labels: str) -> float:
    value = sender.registry.get_sample_value(name, labels)
    return 0.0 if value is None else float(value)


# ---- (c) one stream, no failures: nothing sent twice ------------------------------------


async def test_no_event_sent_twice_without_failures(
    outbox: Outbox, server: FakeIngest, running: Any
) -> None:
    sender = make_sender(outbox, server)
    running(sender)
    ids: list[str] = []

    def produce() -> None:  # the agent's capture thread, racing the sender
        for i in range(700):
            e = delete_event(i)
            outbox.put(e)
            ids.append(e.event_id)

    await asyncio.to_thread(produce)
    await until(lambda: len(server.store) == 700)
    received = server.received_ids()
    assert len(received) == 700 and set(received) == set(ids)
    assert max(len(r) for r in server.requests) <= 500
    assert len(server.requests) < 700 // 2  # batching happened
    await until(lambda: outbox.stats().events == 0)
    assert sample(sender, "watcher_outbox_sent_total", status="stored") == 700
    assert sample(sender, "watcher_outbox_batch_seconds_count") == len(server.requests)


# ---- (b) backend down for a while ---------------------------------------------------------


async def test_backend_down_then_back(outbox: Outbox, server: FakeIngest, running: Any) -> None:
    server.stop()  # connection refused from now on, same port kept
    sender = make_sender(outbox, server, backoff_base_s=0.05, backoff_cap_s=0.2)
    events = [delete_event(i) for i in range(300)]
    outbox.put_many(events)
    running(sender)
    await asyncio.sleep(1.0)
    failures = sample(sender, "watcher_outbox_send_failures_total", reason="network")
    assert 2 <= failures <= 60  # retrying, but backing off rather than spinning
    assert outbox.stats().events == 300
    server.start()
    await until(lambda: len(server.store) == 300, 5)
    await until(lambda: outbox.stats().events == 0)
    assert Counter(server.received_ids()) == Counter(e.event_id for e in events)


# ---- (d) Retry-After ----------------------------------------------------------------------


async def test_503_retry_after_seconds_is_honoured(
    outbox: Outbox, server: FakeIngest, running: Any
) -> None:
    server.faults.append((503, {"Retry-After": "1"}))
    sender = make_sender(outbox, server, backoff_base_s=0.01, backoff_cap_s=0.01)
    outbox.put_many([delete_event(i) for i in range(10)])
    running(sender)
    await until(lambda: len(server.store) == 10, 5)
    gap = server.request_times[1] - server.request_times[0]
    assert 0.95 <= gap < 1.5
    assert sample(sender, "watcher_outbox_send_failures_total", reason="http_503") == 1


async def test_429_retry_after_http_date_is_honoured(
    outbox: Outbox, server: FakeIngest, running: Any
) -> None:
    server.faults.append((429, {"Retry-After": http_date(2)}))
    sender = make_sender(outbox, server, backoff_base_s=0.01, backoff_cap_s=0.01)
    outbox.put(delete_event())
    running(sender)
    await until(lambda: len(server.store) == 1, 5)
    gap = server.request_times[1] - server.request_times[0]
    assert gap >= 0.9  # HTTP dates have 1 s resolution: 2 s from now is 1..2 s
    assert sample(sender, "watcher_outbox_send_failures_total", reason="http_429") == 1


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Thu, 26 Nov 2026 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Thu, 26 Nov 2026 11:00:00 GMT", now) == 0.0  # past → now
    assert parse_retry_after("-5") == 0.0
    assert timedelta(seconds=parse_retry_after("1.5") or 0) == timedelta(seconds=1.5)


async def test_5xx_backs_off_and_recovers(outbox: Outbox, server: FakeIngest, running: Any) -> None:
    server.faults.extend([(500, {}), (502, {}), (500, {})])
    sender = make_sender(outbox, server)
    outbox.put_many([delete_event(i) for i in range(5)])
    running(sender)
    await until(lambda: len(server.store) == 5, 5)
    assert sample(sender, "watcher_outbox_send_failures_total", reason="http_5xx") == 3
    assert len(server.requests) == 4


# ---- (e) blobs ------------------------------------------------------------------------------


async def test_blob_uploaded_before_its_event(outbox: Outbox, server: FakeIngest) -> None:
    big = os.urandom(MAX_INLINE_CONTENT * 2)
    sha = hashlib.sha256(big).hexdigest()
    small = snapshot_event("small.c")
    first, second = snapshot_event("a.bin"), snapshot_event("b.bin")
    outbox.put(small, b"tiny")
    outbox.put(first, big)
    outbox.put(second, big)
    sender = make_sender(outbox, server)
    assert await sender.flush(5) == 3
    order = server.order
    assert (
        order.index(("HEAD", sha))
        < order.index(("PUT", sha))
        < order.index(("POST", first.event_id))
    )
    assert order.count(("PUT", sha)) == 1
    assert server.blobs[sha] == big
    assert set(server.store) == {small.event_id, first.event_id, second.event_id}
    assert outbox.get_blob(sha) is None and outbox.stats().bytes == 0

    # The backend lost the blob; our cache says "uploaded": it answers retry, we re-upload.
    server.blobs.clear()
    third = snapshot_event("c.bin")
    outbox.put(third, big)
    sender.backoff_base_s = 0.01
    await sender.flush(5)  # sends, gets "retry", event deferred
    await until(lambda: (outbox.next_due_us() or 0) <= time.time_ns() // 1000, 2)
    await sender.flush(5)
    assert third.event_id in server.store and server.blobs[sha] == big
    assert sample(sender, "watcher_outbox_sent_total", status="retry") == 1
    assert server.order.count(("PUT", sha)) == 2


async def test_blob_already_on_server_is_not_uploaded(outbox: Outbox, server: FakeIngest) -> None:
    big = os.urandom(MAX_INLINE_CONTENT + 10)
    sha = hashlib.sha256(big).hexdigest()
    server.blobs[sha] = big
    outbox.put(snapshot_event(), big)
    await make_sender(outbox, server).flush(5)
    assert ("HEAD", sha) in server.order and ("PUT", sha) not in server.order


# ---- (h) rejected events ------------------------------------------------------------------


async def test_rejected_goes_dead_and_does_not_block(
    outbox: Outbox, server: FakeIngest, caplog: pytest.LogCaptureFixture
) -> None:
    events = [delete_event(i) for i in range(20)]
    bad = {events[0].event_id, events[7].event_id, events[19].event_id}
    server.reject_ids |= bad
    outbox.put_many(events)
    sender = make_sender(outbox, server)
    with caplog.at_level(logging.DEBUG):
        await sender.flush(5)
    assert set(server.store) == {e.event_id for e in events} - bad
    assert outbox.stats().events == 0 and outbox.stats().dead == 3
    assert {d.event_id for d in outbox.dead_events()} == bad
    assert all(d.reason == "test says no" for d in outbox.dead_events())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for event_id in bad:
        assert any(event_id in m and "file.delete" in m and "test says no" in m for m in warnings)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)
    assert not any("202012345" in r.getMessage() for r in caplog.records if r.levelno <= 20)
    assert sample(sender, "watcher_outbox_sent_total", status="rejected") == 3


async def test_413_halves_the_batch_and_a_lone_oversize_event_goes_dead(
    outbox: Outbox, server: FakeIngest
) -> None:
    server.max_batch = 7
    events = [delete_event(i) for i in range(60)]
    outbox.put_many(events)
    sender = make_sender(outbox, server, batch_max_events=100)
    await sender.flush(5)
    assert set(server.store) == {e.event_id for e in events}
    accepted = [r for r in server.requests if len(r) <= 7]
    assert sum(len(r) for r in accepted) == 60  # each event accepted exactly once
    server.max_batch = 0
    lone = delete_event()
    outbox.put(lone)
    await sender.flush(5)
    assert [d.event_id for d in outbox.dead_events()] == [lone.event_id]
    assert "413" in outbox.dead_events()[0].reason


async def test_auth_error_logged_once_and_nothing_dropped(
    outbox: Outbox, server: FakeIngest, running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.token = "another-token"
    sender = make_sender(outbox, server)
    outbox.put_many([delete_event(i) for i in range(10)])
    with caplog.at_level(logging.INFO, logger="watcher_common.sender"):
        running(sender)
        await until(
            lambda: sample(sender, "watcher_outbox_send_failures_total", reason="auth") >= 4
        )
        assert outbox.stats().events == 10
        server.token = TOKEN
        await until(lambda: len(server.store) == 10, 5)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "WATCHER_AGENT_TOKEN" in errors[0].getMessage()
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


# ---- stop / drain -------------------------------------------------------------------------


async def test_stop_drains_within_timeout(outbox: Outbox, server: FakeIngest) -> None:
    sender = make_sender(outbox, server, linger_s=0.5, batch_max_events=50)
    task = asyncio.create_task(sender.run_forever())
    await asyncio.sleep(0.05)
    outbox.put_many([delete_event(i) for i in range(400)])
    await sender.stop(5)
    await asyncio.wait_for(task, 1)
    assert len(server.store) == 400 and outbox.stats().events == 0


async def test_stop_gives_up_at_the_deadline_keeping_events(
    outbox: Outbox, server: FakeIngest
) -> None:
    server.slow_next = 1  # the server holds the request past the drain timeout
    sender = make_sender(outbox, server)
    outbox.put_many([delete_event(i) for i in range(5)])
    task = asyncio.create_task(sender.run_forever())
    await until(lambda: len(server.requests) == 1, 5)
    started = time.monotonic()
    await sender.stop(0.3)
    await asyncio.wait_for(task, 1)  # returns normally, not cancelled
    assert time.monotonic() - started < 1.0
    assert outbox.stats().events == 5 and outbox.in_flight() == 0  # kept for the next run


# ---- (a) SIGKILL mid-batch, restart: all delivered, none duplicated -----------------------


def _spawn(path: Path, server: FakeIngest) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "_sender_proc.py"), str(path), server.url, TOKEN, "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_sigkill_mid_batch_then_restart_delivers_everything_once(
    tmp_path: Path, server: FakeIngest
) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path)
    events = [delete_event(i) for i in range(450)]
    ob.put_many(events)
    ob.close()
    server.slow_next = 1  # stores the first batch, then holds the answer
    first = _spawn(path, server)
    assert server.wait_for(lambda s: len(s.requests) >= 1, 15)
    time.sleep(0.1)
    first.send_signal(signal.SIGKILL)
    first.wait(5)
    held = set(server.requests[0])
    assert len(held) == 100 and held <= set(server.store)  # stored, but never acked
    server.unblock.set()

    second = _spawn(path, server)
    try:
        assert server.wait_for(lambda s: len(s.store) == 450, 15)
        # Let it ack the last answer, then SIGTERM: it drains and exits cleanly.
        time.sleep(0.3)
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    ids = [e.event_id for e in events]
    assert set(server.store) == set(ids)
    assert all(server.stored_count[i] == 1 for i in ids)
    received = Counter(server.received_ids())
    assert {i for i, n in received.items() if n > 1} == held  # only the killed batch re-sent
    reopened = Outbox(path)
    assert reopened.stats().events == 0
    reopened.close()


def test_outbox_notifies_sender_from_another_thread(outbox: Outbox, server: FakeIngest) -> None:
    async def scenario() -> float:
        sender = make_sender(outbox, server, idle_poll_s=30, linger_s=0.0)
        task = asyncio.create_task(sender.run_forever())
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        threading.Thread(target=outbox.put, args=(delete_event(),)).start()
        await until(lambda: len(server.store) == 1, 5)
        took = time.monotonic() - t0
        await sender.stop(1)
        await task
        return took

    assert asyncio.run(scenario()) < 1.0  # woken by the put, not by the 30 s idle poll


def test_puts_after_sends_are_never_left_for_the_idle_poll(
    outbox: Outbox, server: FakeIngest
) -> None:
    """Wake-ups are skipped while a batch is out (the sender reads again after it), not
    once it has drained the outbox: each burst after a drained one leaves at once, not
    after the 30 s idle poll."""

    def burst() -> None:
        for _ in range(5):
            outbox.put(delete_event())
            time.sleep(0.002)

    async def scenario() -> list[float]:
        sender = make_sender(outbox, server, idle_poll_s=30, linger_s=0.0)
        task = asyncio.create_task(sender.run_forever())
        await asyncio.sleep(0.1)
        took: list[float] = []
        for i in range(10):
            t0 = time.monotonic()
            producer = threading.Thread(target=burst)
            producer.start()
            await until(lambda n=5 * (i + 1): len(server.store) == n, 10)
            took.append(time.monotonic() - t0)
            producer.join()
        await sender.stop(1)
        await task
        return took

    assert max(asyncio.run(scenario())) < 2.0


async def test_outbox_write_error_after_send_does_not_crash(
    outbox: Outbox, server: FakeIngest, running: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from watcher_common.outbox import OutboxFull

    real_ack = outbox.ack
    calls: list[int] = []

    def flaky_ack(ids: list[str]) -> None:
        calls.append(len(ids))
        if len(calls) == 1:
            raise OutboxFull("disk is full (simulated)")
        real_ack(ids)

    monkeypatch.setattr(outbox, "ack", flaky_ack)
    events = [delete_event(i) for i in range(5)]
    outbox.put_many(events)
    task = running(make_sender(outbox, server))
    await until(lambda: outbox.stats().events == 0, 5)
    assert not task.done()
    assert all(n == 1 for n in server.stored_count.values()) and len(server.store) == 5
    assert len(server.requests) == 2  # re-sent once after the failed ack; answered duplicate


# ---- prepare(): the HTTP client is built before the agent reports ready -----------------


async def test_prepare_builds_the_client_that_run_forever_then_uses(
    outbox: Outbox, server: FakeIngest, running: Any
) -> None:
    import httpx

    made: list[httpx.AsyncClient] = []

    def factory(**kw: Any) -> httpx.AsyncClient:
        made.append(httpx.AsyncClient(**kw))
        return made[-1]

    sender = make_sender(outbox, server, client_factory=factory)
    sender.prepare()
    sender.prepare()  # idempotent: still one client
    assert len(made) == 1
    running(sender)
    e = delete_event(1)
    outbox.put(e)
    await until(lambda: server.received_ids() == [e.event_id])
    assert len(made) == 1  # the prepared client sent it; none built after "ready"
    await sender.stop(0.5)
    assert made[0].is_closed


async def test_agent_runtime_sets_the_most_events_per_request(
    tmp_path: Path, server: FakeIngest, running: Any
) -> None:
    """AgentRuntime.open(batch_max_events=...) (procmon: 1000, the backend's limit): 800
    queued events go in one request, not 500 + 300."""
    from watcher_common.agent_config import AgentSettings
    from watcher_common.agent_runtime import AgentRuntime

    settings = AgentSettings(api_server=server.url, agent_token=TOKEN)
    rt = AgentRuntime.open(
        "watcher-test", settings, tmp_path / "o.db", "0", CollectorRegistry(), batch_max_events=1000
    )
    rt.outbox.put_many([delete_event(i) for i in range(800)])
    running(rt.sender)
    await until(lambda: len(server.store) == 800)
    assert [len(r) for r in server.requests] == [800]
    await rt.sender.stop(0.5)
    rt.outbox.close()
