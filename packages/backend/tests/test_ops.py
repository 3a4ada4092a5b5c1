"""GET /health (the seed's exact shape) and GET /metrics (bounded, route templates only)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

HEALTH_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def test_health_shape(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["status", "timestamp"]
    assert body["status"] == "healthy"
    assert HEALTH_RE.match(body["timestamp"]), body


def test_health_unhealthy_when_db_fails(client: TestClient) -> None:
    class Broken:
        def connect(self) -> Any:
            raise OperationalError("SELECT 1", {}, Exception("db down"))

    real = client.app.state.engine  # type: ignore[attr-defined]
    client.app.state.engine = Broken()  # type: ignore[attr-defined]
    try:
        r = client.get("/health")
    finally:
        client.app.state.engine = real  # type: ignore[attr-defined]
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy" and HEALTH_RE.match(r.json()["timestamp"])


def _series(text: str, name: str) -> list[dict[str, str]]:
    out = []
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out.append(dict(s.labels))
    return out


def test_metrics_use_route_templates_and_stay_bounded(
    client: TestClient, reader_headers: dict[str, str], agent_headers: dict[str, str]
) -> None:
    for i in range(200):
        client.get(f"/api/os-1/hw1/{202000000 + i}", headers=reader_headers)
        client.get(f"/no/such/{202000000 + i}")
    client.request("BREW", "/health")
    client.post("/api/v1/events", json={"events": [{"kind": "bogus"}]}, headers=agent_headers)
    text = client.get("/metrics").text
    assert "2020000" not in text  # no student id anywhere in the labels
    reqs = _series(text, "http_requests_total")
    routes = {s["route"] for s in reqs}
    assert "/api/{class_div}/{hw_name}/{student_id}" in routes
    assert "unmatched" in routes
    assert all(r == "unmatched" or r.startswith("/") for r in routes)
    assert {s["method"] for s in reqs} <= {"GET", "POST", "other", "HEAD", "PUT"}
    assert len(reqs) < 12, reqs
    dur = _series(text, "http_request_duration_seconds_count")
    assert len(dur) < 10
    ingest = _series(text, "watcher_ingest_events_total")
    assert {"kind": "unknown", "status": "rejected"} in ingest


def test_writer_metrics(client: TestClient, agent_headers: dict[str, str]) -> None:
    ev = {
        "kind": "file.delete",
        "event_id": "metrics-test-0001",
        "agent": "filemon",
        "agent_version": "t",
        "ts": "2026-01-01T00:00:00Z",
        "class_div": "os-1",
        "student_id": "202012345",
        "assignment": "hw1",
        "path": "a.c",
    }
    client.post("/api/v1/events", json={"events": [ev, ev]}, headers=agent_headers)
    text = client.get("/metrics").text
    ingest = {(s["kind"], s["status"]) for s in _series(text, "watcher_ingest_events_total")}
    assert {("file.delete", "stored"), ("file.delete", "duplicate")} <= ingest
    assert "watcher_writer_batch_size_count 1.0" in text
    assert "watcher_writer_commit_seconds_count 1.0" in text
