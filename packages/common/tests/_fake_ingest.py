"""A real, local HTTP server implementing the ingest contract, with fault injection.

Idempotent by event_id like the backend; records every request so tests can check what
arrived when. Runs in threads (stdlib), so it keeps serving while the test's event loop
or a subprocess sender talks to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from watcher_common.wire import FileSnapshot, new_event_id, parse_event, utcnow

TOKEN = "test-agent-token-0123456789"


def delete_event(i: int = 0) -> Any:
    from watcher_common.wire import FileDelete

    return FileDelete(
        event_id=new_event_id(),
        agent="test",
        agent_version="0",
        ts=utcnow(),
        class_div="os-1",
        student_id="202012345",
        assignment="hw1",
        path=f"dir/file{i}.c",
    )


def snapshot_event(path: str = "main.c") -> FileSnapshot:
    return FileSnapshot(
        event_id=new_event_id(),
        agent="test",
        agent_version="0",
        ts=utcnow(),
        class_div="os-1",
        student_id="202012345",
        assignment="hw1",
        path=path,
        size=0,
    )


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed client makes the handler's write fail; that is the point


class FakeIngest:
    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.lock = threading.Lock()
        self.store: dict[str, dict[str, Any]] = {}
        self.stored_count: Counter[str] = Counter()
        self.requests: list[list[str]] = []  # event ids of each POST, arrival order
        self.request_times: list[float] = []
        self.order: list[tuple[str, str]] = []  # ("PUT", sha) / ("POST", event_id) ...
        self.blobs: dict[str, bytes] = {}
        self.faults: list[tuple[int, dict[str, str]]] = []  # next POST answers
        self.max_batch: int | None = None  # 413 above this many events
        self.reject_ids: set[str] = set()
        self.slow_next = 0  # this many POSTs store, then wait for `unblock` before answering
        self.unblock = threading.Event()
        self.port = 0
        self._server: _Quiet | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeIngest:
        self._server = _Quiet(("127.0.0.1", self.port), _handler(self))
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def received_ids(self) -> list[str]:
        with self.lock:
            return [i for req in self.requests for i in req]

    def wait_for(self, pred: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return True
            time.sleep(0.02)
        return False

    # ---- the contract ------------------------------------------------------------------

    def ingest(self, events: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for raw in events:
            event_id = str(raw.get("event_id", ""))
            try:
                ev = parse_event(raw)
            except ValidationError as exc:
                out.append({"event_id": event_id, "status": "rejected", "error": str(exc)[:200]})
                continue
            if event_id in self.reject_ids:
                out.append({"event_id": event_id, "status": "rejected", "error": "test says no"})
                continue
            if (
                isinstance(ev, FileSnapshot)
                and ev.sha256
                and ev.content_b64 is None
                and not ev.too_large
                and ev.sha256 not in self.blobs
            ):
                out.append({"event_id": event_id, "status": "retry", "error": "blob missing"})
                continue
            if isinstance(ev, FileSnapshot) and ev.content_b64 is not None:
                data = base64.b64decode(ev.content_b64)
                assert hashlib.sha256(data).hexdigest() == ev.sha256
            if event_id in self.store:
                out.append({"event_id": event_id, "status": "duplicate"})
            else:
                self.store[event_id] = raw
                self.stored_count[event_id] += 1
                out.append({"event_id": event_id, "status": "stored"})
        return out


def _handler(fake: FakeIngest) -> type[BaseHTTPRequestHandler]:
    class H(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, code: int, doc: Any = None, headers: dict[str, str] | None = None) -> None:
            data = b"" if doc is None else json.dumps(doc).encode()
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _authed(self) -> bool:
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._reply(401, {"detail": "bad token"}, {"WWW-Authenticate": "Bearer"})
                return False
            return True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def do_HEAD(self) -> None:
            if not self._authed():
                return
            sha = self.path.rsplit("/", 1)[-1]
            with fake.lock:
                fake.order.append(("HEAD", sha))
                code = 200 if sha in fake.blobs else 404
            self._reply(code)

        def do_PUT(self) -> None:
            body = self._body()
            if not self._authed():
                return
            sha = self.path.rsplit("/", 1)[-1]
            if hashlib.sha256(body).hexdigest() != sha:
                self._reply(422, {"detail": "hash mismatch"})
                return
            with fake.lock:
                fake.order.append(("PUT", sha))
                created = sha not in fake.blobs
                fake.blobs[sha] = body
            self._reply(201 if created else 200, {"sha256": sha})

        def do_POST(self) -> None:
            body = self._body()
            if not self._authed():
                return
            events = json.loads(body)["events"]
            ids = [str(e.get("event_id")) for e in events]
            with fake.lock:
                fake.requests.append(ids)
                fake.request_times.append(time.monotonic())
                fake.order.extend(("POST", i) for i in ids)
                if fake.faults:
                    code, headers = fake.faults.pop(0)
                    fault: tuple[int, dict[str, str]] | None = (code, headers)
                elif fake.max_batch is not None and len(events) > fake.max_batch:
                    fault = (413, {})
                else:
                    fault = None
                    results = fake.ingest(events)
                slow = fake.slow_next > 0
                if slow:
                    fake.slow_next -= 1
            if fault is not None:
                self._reply(fault[0], {"detail": "injected"}, fault[1])
                return
            if slow:
                fake.unblock.wait(30)
            self._reply(200, {"results": results})

    return H


def http_date(seconds_from_now: float) -> str:
    from email.utils import format_datetime

    return format_datetime(datetime.fromtimestamp(time.time() + seconds_from_now, UTC), True)
