"""The agents' tiny HTTP server: ``GET /metrics`` and ``GET /health`` on METRICS_PORT.

Stdlib ``ThreadingHTTPServer`` in a daemon thread: it must keep answering probes even when
the agent's event loop is busy or stuck, and it needs no extra dependency.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("watcher_common.agent_http")

Status = Literal["healthy", "degraded", "unhealthy"]


def utc_timestamp() -> str:
    """Now as UTC ISO-8601 with a ``Z`` suffix, e.g. ``2026-11-26T17:03:11.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Health:
    """Named degraded/unhealthy reasons, set and cleared from any thread.

    ``status`` is the worst of them: any unhealthy reason → unhealthy (probe fails, 503);
    else any degraded reason → degraded (200: the agent still works, e.g. outbox full).
    """

    def __init__(self, service: str, info: Callable[[], Mapping[str, Any]] | None = None):
        self.service = service
        self._info = info
        self._lock = threading.Lock()
        self._degraded: dict[str, str] = {}
        self._unhealthy: dict[str, str] = {}

    def set_degraded(self, reason: str, detail: str = "") -> None:
        with self._lock:
            if reason not in self._degraded:
                log.warning("health degraded: %s %s", reason, detail)
            self._degraded[reason] = detail

    def set_unhealthy(self, reason: str, detail: str = "") -> None:
        with self._lock:
            if reason not in self._unhealthy:
                log.error("health unhealthy: %s %s", reason, detail)
            self._unhealthy[reason] = detail

    def clear(self, reason: str) -> None:
        with self._lock:
            was = self._degraded.pop(reason, None) is not None
            was = self._unhealthy.pop(reason, None) is not None or was
        if was:
            log.info("health recovered: %s", reason)

    def status(self) -> Status:
        with self._lock:
            if self._unhealthy:
                return "unhealthy"
            return "degraded" if self._degraded else "healthy"

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            details = {**self._degraded, **self._unhealthy}
            unhealthy = bool(self._unhealthy)
        status: Status = "unhealthy" if unhealthy else ("degraded" if details else "healthy")
        out: dict[str, Any] = {
            "status": status,
            "timestamp": utc_timestamp(),
            "service": self.service,
            "reasons": sorted(details),
            "details": {k: v for k, v in sorted(details.items()) if v},
        }
        if self._info is not None:
            try:
                out.update(self._info())
            except Exception as exc:  # a broken info callback must not break the probe
                out["info_error"] = type(exc).__name__
        return out


def _make_handler(
    registry: CollectorRegistry, health: Callable[[], Mapping[str, Any]]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "watcher-agent"
        sys_version = ""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/health":
                try:
                    doc = dict(health())
                except Exception as exc:
                    doc = {
                        "status": "unhealthy",
                        "timestamp": utc_timestamp(),
                        "reasons": ["health_check_error"],
                        "error": type(exc).__name__,
                    }
                doc.setdefault("timestamp", utc_timestamp())
                doc.setdefault("reasons", [])
                code = 503 if doc.get("status") == "unhealthy" else 200
                self._send(code, "application/json", json.dumps(doc).encode())
            else:
                self._send(404, "application/json", b'{"detail":"Not Found"}')

        def do_HEAD(self) -> None:
            self._send(404, "application/json", b"", body=False)

        def _send(self, code: int, ctype: str, data: bytes, body: bool = True) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the real logs

    return Handler


class AgentHttpServer:
    """``start()`` binds and serves in a daemon thread; ``port`` is the bound port."""

    def __init__(
        self,
        health: Callable[[], Mapping[str, Any]] | Health,
        registry: CollectorRegistry | None = None,
        host: str = "0.0.0.0",
        port: int = 9090,
    ) -> None:
        self._health = health.snapshot if isinstance(health, Health) else health
        self._registry = REGISTRY if registry is None else registry
        self.host = host
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self, poll_interval_s: float = 0.2) -> AgentHttpServer:
        """Serve in a thread; ``poll_interval_s``: how often it wakes to see whether
        :meth:`stop` was asked (the longest stop() waits)."""
        handler = _make_handler(self._registry, self._health)
        server = ThreadingHTTPServer((self.host, self.port), handler)
        server.daemon_threads = True
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            name="agent-http",
            kwargs={"poll_interval": poll_interval_s},
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("metrics and health on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
