"""Drains the outbox to the backend: batched, idempotent, patient.

Delivery is at-least-once; the backend deduplicates by ``event_id``. Within one process an
event is sent again only after the request carrying it failed (the outbox keeps events
``in flight`` until they are acked, rejected, deferred or released). Nothing is ever
dropped for a transient reason: network errors, 5xx, 429/503 and auth errors only delay.
Events leave the outbox only when the backend answered ``stored``/``duplicate``, or refused
them for good (``rejected``, or a single event too large / invalid) — those go to ``dead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import sqlite3
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from prometheus_client import REGISTRY, CollectorRegistry
from pydantic import ValidationError

from watcher_common.outbox import Outbox, OutboxError, QueuedEvent
from watcher_common.outbox_metrics import SenderMetrics, register_outbox_metrics
from watcher_common.wire import IngestResponse

log = logging.getLogger("watcher_common.sender")

EVENTS_PATH = "/api/v1/events"
BLOBS_PATH = "/api/v1/blobs/"
_UPLOADED_CACHE = 4096

# What httpx/httpcore import only at the first request (the anyio backend, h11, TLS
# streams): ~0.2 s of CPU. An agent calls preload_transport() before it says it is ready,
# so that cost is not paid while it is already capturing.
_LAZY_TRANSPORT_MODULES = (
    "sniffio",
    "anyio",
    "anyio._backends._asyncio",
    "anyio.streams.tls",
    "h11",
    "httpcore._async.http11",
    "httpcore._async.connection_pool",
    "httpcore._backends.anyio",
)


def preload_transport() -> None:
    """Import the sender's lazily imported transport modules now (best effort)."""
    for name in _LAZY_TRANSPORT_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True, slots=True)
class _Failure:
    reason: str  # a FAILURE_REASONS label
    detail: str
    retry_after_s: float | None = None
    immediate: bool = False  # e.g. batch split after 413: try again now, not a streak


BATCH_MAX_EVENTS = 500  # events per request (and at most batch_max_bytes)
LINGER_S = 0.2  # the wait for a burst to fill a batch


class Sender:
    def __init__(
        self,
        outbox: Outbox,
        api_server: str,
        token: str | None,
        *,
        client_factory: Callable[..., httpx.AsyncClient] = httpx.AsyncClient,
        batch_max_events: int = BATCH_MAX_EVENTS,
        batch_max_bytes: int = 1 << 20,
        linger_s: float = LINGER_S,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 60.0,
        retry_after_cap_s: float = 600.0,
        request_timeout_s: float = 30.0,
        idle_poll_s: float = 5.0,
        registry: CollectorRegistry | None = None,
        metrics: SenderMetrics | None = None,
        rng: Callable[[], float] = random.random,
        user_agent: str = "watcher-agent",
    ) -> None:
        self._outbox = outbox
        self._base_url = api_server.rstrip("/")
        self._token = token
        self._client_factory = client_factory
        self.batch_max_events = batch_max_events
        self.batch_max_bytes = batch_max_bytes
        self.linger_s = linger_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.retry_after_cap_s = retry_after_cap_s
        self.request_timeout_s = request_timeout_s
        self.idle_poll_s = idle_poll_s
        self._rng = rng
        self._user_agent = user_agent
        self.registry = REGISTRY if registry is None else registry
        self.metrics = metrics or register_outbox_metrics(outbox, self.registry)
        self._cur_max_events = batch_max_events
        self._successes_since_shrink = 0
        self._failures = 0  # current failure streak
        self._auth_logged = False
        self._uploaded: OrderedDict[str, None] = OrderedDict()
        self.acked_total = 0
        self.requests_total = 0
        # asyncio objects are bound to the loop that runs us; made in _attach().
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_pending = False  # a _wake_up is scheduled on the loop, not yet run
        # False while a batch is out or a backoff runs: run_forever reads the outbox again
        # before it next waits, so a put then needs no wake-up
        self._listening = True
        self._stop_event: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._prepared: httpx.AsyncClient | None = None
        self._stopping = False
        self._deadline = 0.0
        self._cancelled_by_stop = False

    # ---- lifecycle ------------------------------------------------------------------

    def _attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._wake_pending = False
        self._stop_event = asyncio.Event()
        self._done = asyncio.Event()
        self._outbox.add_listener(self._notify)

    def _notify(self) -> None:
        """Called by ``Outbox.put`` from any thread, after its commit."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or not self._listening:
            return  # busy sending or backing off: it reads the outbox again before waiting
        if wake.is_set() or self._wake_pending:
            # already woken, or a wake-up is scheduled: either is followed by a read that
            # sees this commit. Waking the loop thread (a write to its self-pipe, a GIL
            # hand-over) once per put costs more than the put.
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # loop already closed
            loop.call_soon_threadsafe(self._wake_up)

    def _wake_up(self) -> None:
        self._wake_pending = False  # before set(): a later put schedules its own wake-up
        if self._wake is not None:
            self._wake.set()

    def _client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": self._user_agent}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return self._client_factory(
            base_url=self._base_url,
            headers=headers,
            timeout=httpx.Timeout(self.request_timeout_s),
        )

    def prepare(self) -> None:
        """Build run_forever's HTTP client now: its TLS context (the CA bundle) costs ~50 ms
        of CPU even for http://, which an agent should pay before it reports ready, not
        during the first student work it traces."""
        if self._prepared is None:
            self._prepared = self._client()

    async def run_forever(self) -> None:
        """Send until ``stop()``; returns normally after a stop (even a forced one)."""
        self._attach()
        self._task = asyncio.current_task()
        assert self._wake is not None and self._done is not None
        prepared, self._prepared = self._prepared, None
        try:
            async with prepared if prepared is not None else self._client() as client:
                while True:
                    self._listening = True  # from here on we may end up waiting: wake us
                    self._wake.clear()  # before reading, so a put after this wakes us
                    # Only a read that began after stop() may end the drain: events put
                    # just before stop() must still go out.
                    stop_seen = self._stopping
                    if await self._step(client):
                        continue
                    if self._stopping:
                        if stop_seen:
                            break
                        continue
                    if await self._wait_idle() and not self._stopping and self.linger_s > 0:
                        await self._sleep(self.linger_s)  # let a burst fill the batch
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._cancelled_by_stop or task is None:
                raise
            task.uncancel()
            log.warning("drain timeout: stopped with %d events queued", self._outbox.stats().events)
        finally:
            self._outbox.remove_listener(self._notify)
            self._done.set()

    async def stop(self, drain_timeout_s: float = 10.0) -> None:
        """Send what can be sent within ``drain_timeout_s``, then make run_forever return."""
        self._stopping = True
        self._deadline = time.monotonic() + drain_timeout_s
        if self._loop is None or self._done is None:
            return  # not running yet: run_forever will send what is due and return
        assert self._wake is not None and self._stop_event is not None
        self._wake.set()
        self._stop_event.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._done.wait()), drain_timeout_s)
        except TimeoutError:
            if self._task is not None and not self._task.done():
                self._cancelled_by_stop = True
                self._task.cancel()
            await self._done.wait()

    async def flush(self, timeout_s: float = 10.0) -> int:
        """Send until nothing is due (for tests and one-shot tools); returns events acked.

        Uses its own client; backs off on failures like run_forever. TimeoutError if the
        outbox still has due events after ``timeout_s``.
        """
        if self._loop is None:
            self._attach()
        before = self.acked_total
        deadline = time.monotonic() + timeout_s
        async with self._client() as client:
            while await self._step(client):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flush: {self._outbox.stats().events} events left")
        return self.acked_total - before

    # ---- waiting --------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early on stop()."""
        assert self._stop_event is not None
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    async def _wait_idle(self) -> bool:
        """Wait for a put, a deferred event becoming due, or the idle poll. True on a put."""
        assert self._wake is not None
        timeout = self.idle_poll_s
        # reads of the outbox run on the loop (no fsync; the writes -- acks, rejects,
        # defers -- wait for theirs in a worker thread): a hop to a worker thread cost
        # ~0.5 ms of CPU here, more than the read
        due = self._outbox.next_due_us()
        if due is not None:
            timeout = min(timeout, max(0.01, due / 1e6 - time.time()))
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # ---- one batch ------------------------------------------------------------------

    async def _step(self, client: httpx.AsyncClient) -> bool:
        """Send one batch if any is due. False when there was nothing to send, or when
        stopping and the backoff would outlast the drain deadline."""
        try:
            batch = self._outbox.next_batch(self._cur_max_events, self.batch_max_bytes)
        except OutboxError as exc:
            log.error("outbox read failed: %s", exc)
            await self._sleep(self._backoff(max(1, self._failures)))
            return not self._stopping
        if not batch:
            return False
        self._listening = False  # whatever happens to this batch, we read again after it
        try:
            failure = await self._send_batch(client, batch)
        except (OutboxError, sqlite3.Error) as exc:
            # e.g. the disk is full and even an ack cannot be written: the unacked events
            # were released and will be sent again (a duplicate is harmless); never crash.
            log.error("outbox write failed after sending: %s", exc)
            failure = _Failure("outbox", str(exc))
        if failure is None:
            self._on_success()
            return True
        if failure.immediate:
            return True
        delay = self._on_failure(failure)
        if self._stopping and time.monotonic() + delay > self._deadline:
            return False
        await self._sleep(delay)
        return True

    async def _send_batch(
        self, client: httpx.AsyncClient, batch: list[QueuedEvent]
    ) -> _Failure | None:
        started = time.perf_counter()
        pending = {e.event_id for e in batch}
        try:
            uploaded = await self._upload_blobs(client, batch, pending)
            if isinstance(uploaded, _Failure):
                return uploaded
            batch = uploaded
            if not batch:
                return None
            body = b'{"events":[' + b",".join(e.body for e in batch) + b"]}"
            self.requests_total += 1
            try:
                resp = await client.post(
                    EVENTS_PATH, content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.HTTPError as exc:
                return _Failure("network", f"{type(exc).__name__}: {exc}")
            if resp.status_code == 200:
                return await self._apply_results(resp, batch, pending)
            if resp.status_code in (413, 422):
                return await self._split_or_reject(resp, batch, pending)
            return self._classify(resp)
        finally:
            if pending:  # not acked/rejected/deferred: back to the queue (also on cancel)
                self._outbox.release(pending)
            self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _upload_blobs(
        self, client: httpx.AsyncClient, batch: list[QueuedEvent], pending: set[str]
    ) -> list[QueuedEvent] | _Failure:
        """Make sure the backend has every blob the batch needs (HEAD, then PUT if 404)."""
        for sha in dict.fromkeys(e.blob_sha for e in batch if e.blob_sha):
            if sha in self._uploaded:
                continue
            data = await asyncio.to_thread(self._outbox.get_blob, sha)
            if data is None:
                continue  # nothing to upload; the backend will say retry if it lacks it
            url = BLOBS_PATH + sha
            try:
                resp = await client.head(url)
                if resp.status_code == 404:
                    resp = await client.put(
                        url, content=data, headers={"Content-Type": "application/octet-stream"}
                    )
                    if 400 <= resp.status_code < 500 and resp.status_code not in (
                        401,
                        403,
                        408,
                        429,
                    ):
                        # The backend will never take this blob (too large / hash mismatch).
                        reason = f"blob upload refused: HTTP {resp.status_code}"
                        refused = [(e, reason) for e in batch if e.blob_sha == sha]
                        await self._reject(refused, pending)
                        batch = [e for e in batch if e.blob_sha != sha]
                        continue
            except httpx.HTTPError as exc:
                return _Failure("network", f"{type(exc).__name__}: {exc}")
            if resp.status_code not in (200, 201):
                return self._classify(resp)
            self._uploaded[sha] = None
            if len(self._uploaded) > _UPLOADED_CACHE:
                self._uploaded.popitem(last=False)
        return batch

    async def _apply_results(
        self, resp: httpx.Response, batch: list[QueuedEvent], pending: set[str]
    ) -> _Failure | None:
        try:
            results = IngestResponse.model_validate_json(resp.content).results
        except ValidationError as exc:
            return _Failure("http_5xx", f"unparseable ingest response: {exc.error_count()} errors")
        by_id = {e.event_id: e for e in batch}
        acked: list[str] = []
        rejected: list[tuple[QueuedEvent, str]] = []
        retry: list[QueuedEvent] = []
        statuses: Counter[str] = Counter()
        for r in results:
            event = by_id.pop(r.event_id, None)
            if event is None:
                continue
            statuses[r.status] += 1
            if r.status in ("stored", "duplicate"):
                acked.append(event.event_id)
            elif r.status == "rejected":
                rejected.append((event, r.error or "rejected"))
            else:
                retry.append(event)
        retry.extend(by_id.values())  # no answer for these: try again later
        for status, n in statuses.items():  # one labelled update per status, not per event
            self.metrics.sent.labels(status=status).inc(n)
        if acked:
            await asyncio.to_thread(self._outbox.ack, acked)
            pending.difference_update(acked)
            self.acked_total += len(acked)
        if rejected:
            await self._reject(rejected, pending, count=False)
        if retry:
            await self._defer(retry, pending)
        return None

    async def _split_or_reject(
        self, resp: httpx.Response, batch: list[QueuedEvent], pending: set[str]
    ) -> _Failure | None:
        """413/422 for a whole batch: halve it to find the culprit; a lone event goes dead."""
        if len(batch) > 1:
            self._cur_max_events = max(1, len(batch) // 2)
            self._successes_since_shrink = 0
            log.info(
                "backend refused a batch of %d (HTTP %d); batch size now %d",
                len(batch),
                resp.status_code,
                self._cur_max_events,
            )
            self.metrics.failures.labels(reason="http_4xx").inc()
            return _Failure("http_4xx", f"HTTP {resp.status_code}", immediate=True)
        detail = resp.text[:500]
        await self._reject([(batch[0], f"HTTP {resp.status_code}: {detail}")], pending)
        return None

    async def _reject(
        self, items: Sequence[tuple[QueuedEvent, str]], pending: set[str], count: bool = True
    ) -> None:
        for event, reason in items:
            log.warning("event %s (%s) rejected by backend: %s", event.event_id, event.kind, reason)
            if count:
                self.metrics.sent.labels(status="rejected").inc()
        await asyncio.to_thread(
            self._outbox.reject_many, [(e.event_id, reason) for e, reason in items]
        )
        pending.difference_update(e.event_id for e, _ in items)

    async def _defer(self, events: Sequence[QueuedEvent], pending: set[str]) -> None:
        # Per-event delay grows with its attempts; a missing blob is checked again next time.
        groups: dict[int, list[str]] = defaultdict(list)
        now_us = time.time_ns() // 1000
        for e in events:
            if e.blob_sha:
                self._uploaded.pop(e.blob_sha, None)
            step = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(e.attempts, 30))
            delay = step * (0.5 + self._rng() / 2)
            groups[now_us + int(delay * 1e6)].append(e.event_id)
        for until_us, ids in groups.items():
            await asyncio.to_thread(self._outbox.defer, ids, until_us)
            pending.difference_update(ids)
        log.info("backend asked to retry %d events later", len(events))

    # ---- outcomes -------------------------------------------------------------------

    def _classify(self, resp: httpx.Response) -> _Failure:
        code = resp.status_code
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        if code in (401, 403):
            return _Failure("auth", f"HTTP {code}")
        if code == 429:
            return _Failure("http_429", "HTTP 429", retry_after)
        if code == 503:
            return _Failure("http_503", "HTTP 503", retry_after)
        if code >= 500:
            return _Failure("http_5xx", f"HTTP {code}")
        return _Failure("http_4xx", f"HTTP {code}")

    def _backoff(self, failures: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^(n-1)))."""
        step = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** min(failures - 1, 30))
        return self._rng() * step

    def _on_failure(self, failure: _Failure) -> float:
        self._failures += 1
        if failure.reason != "outbox":  # not a send failure; reported by health/logs
            self.metrics.failures.labels(reason=failure.reason).inc()
        if failure.retry_after_s is not None:
            # Honour the server; a little extra jitter so agents do not return in lockstep.
            delay = min(self.retry_after_cap_s, failure.retry_after_s) * (1 + 0.1 * self._rng())
        else:
            delay = self._backoff(self._failures)
        if failure.reason == "auth" or failure.reason == "http_4xx":
            if not self._auth_logged:
                self._auth_logged = True
                log.error(
                    "backend refused the request (%s): check WATCHER_AGENT_TOKEN and "
                    "API_SERVER; events stay queued and will be retried",
                    failure.detail,
                )
        elif self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "sending to %s failed (%s); attempt %d, retrying in %.1fs",
                self._base_url,
                failure.detail,
                self._failures,
                delay,
            )
        return delay

    def _on_success(self) -> None:
        if self._failures:
            log.info("backend reachable again after %d failed attempts", self._failures)
        self._failures = 0
        self._auth_logged = False
        if self._cur_max_events < self.batch_max_events:
            # Grow back slowly so a size limit does not make every other request fail.
            self._successes_since_shrink += 1
            if self._successes_since_shrink >= 16:
                self._successes_since_shrink = 0
                self._cur_max_events = min(self.batch_max_events, self._cur_max_events * 2)
