"""The agents' own HTTP port (METRICS_PORT) on the running filemon and procmon: ``GET
/metrics`` and ``GET /health`` answer 200 without any credentials; no other path answers,
and no other method does anything."""

from __future__ import annotations

import http.client
import json

import pytest

from .conftest import needs_root
from .procs import System

pytestmark = needs_root

OTHER_PATHS = [
    "/",
    "/metrics/",
    "/metrics/x",
    "/health/",
    "/healthz",
    "/ready",
    "/api/v1/events",
    "/admin",
    "/debug/pprof",
    "/../../etc/passwd",
    "/%2e%2e/%2e%2e/etc/passwd",
    "/METRICS",
    "/outbox.db",
]
# (``//metrics`` is not here: the stdlib request parser folds leading slashes into one, so it
# is /metrics itself, not another resource)
OTHER_METHODS = ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"]


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=b"{}" if method in ("POST", "PUT", "PATCH") else None,
                     headers=headers or {})  # fmt: skip
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.parametrize("agent", ["filemon", "procmon"])
def test_only_metrics_and_health(system: System, agent: str) -> None:
    port = system.fm_port if agent == "filemon" else system.pm_port
    service = f"watcher-{agent}"
    # the two probes, with no credentials, and with a bogus one (ignored, never checked)
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        status, body = request(port, "GET", "/metrics", headers)
        assert status == 200 and b"watcher_outbox_events " in body, (status, body[:200])
        status, body = request(port, "GET", "/health?verbose=1", headers)
        doc = json.loads(body)
        assert status == 200 and doc["status"] == "healthy" and doc["service"] == service, doc
    # nothing else answers on GET
    for path in OTHER_PATHS:
        status, body = request(port, "GET", path)
        assert status == 404, (agent, path, status, body[:200])
        assert b"watcher_" not in body and b"status" not in body, (path, body[:200])
    # no other method does anything, on the two real paths or elsewhere: 404 for HEAD, the
    # stdlib's 501 "Unsupported method" for the rest; never a success and never a body
    # that leaks the metrics or the health document
    for method in ["HEAD", *OTHER_METHODS]:
        for path in ("/metrics", "/health", "/"):
            status, body = request(port, method, path)
            assert status in (404, 501), (agent, method, path, status)
            assert b"watcher_" not in body and b"healthy" not in body, (method, path, body[:200])
    assert system.filemon.running and system.procmon.running
