from __future__ import annotations

import io
import json
import logging
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))

from _fake_ingest import delete_event

from watcher_common.agent_config import AgentSettings, ConfigError
from watcher_common.agent_http import AgentHttpServer, Health
from watcher_common.logs import RedactFilter, Redactor, setup_logging
from watcher_common.outbox import Outbox
from watcher_common.outbox_metrics import register_outbox_metrics

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Health, Outbox]]:
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "o.db")
    metrics = register_outbox_metrics(outbox, registry)
    Counter("file_events", "test", ["event_type"], registry=registry).labels("create").inc()
    metrics.sent.labels(status="stored").inc(3)
    outbox.put_many([delete_event(i) for i in range(2)])
    health = Health("filemon", info=lambda: {"outbox_events": outbox.stats().events})
    server = AgentHttpServer(health, registry, host="127.0.0.1", port=0).start()
    yield f"http://127.0.0.1:{server.port}", health, outbox
    server.stop()
    outbox.close()


def test_metrics_text_parses(served: tuple[str, Health, Outbox]) -> None:
    url, _, _ = served
    code, ctype, body = get(url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["watcher_outbox_events"].samples[0].value == 2
    assert families["watcher_outbox_bytes"].samples[0].value > 0
    assert families["watcher_outbox_oldest_age_seconds"].samples[0].value >= 0
    assert families["watcher_outbox_dead_events"].samples[0].value == 0
    sent = {
        s.labels["status"]: s.value
        for s in families["watcher_outbox_sent"].samples
        if s.name == "watcher_outbox_sent_total"
    }
    assert sent == {"stored": 3, "duplicate": 0, "rejected": 0, "retry": 0}
    reasons = {s.labels["reason"] for s in families["watcher_outbox_send_failures"].samples}
    assert reasons == {"network", "http_5xx", "http_429", "http_503", "http_4xx", "auth"}
    assert "watcher_outbox_batch_seconds" in families
    assert families["file_events"].samples[0].labels == {"event_type": "create"}


def test_health_shape_and_status_codes(served: tuple[str, Health, Outbox]) -> None:
    url, health, _ = served
    code, ctype, body = get(url + "/health")
    doc = json.loads(body)
    assert code == 200 and ctype == "application/json"
    assert doc["status"] == "healthy" and doc["reasons"] == [] and ISO_Z.match(doc["timestamp"])
    assert doc["service"] == "filemon" and doc["outbox_events"] == 2

    health.set_degraded("outbox_full", "over budget")
    health.set_degraded("watch_limit")
    code, _, body = get(url + "/health")
    doc = json.loads(body)
    assert code == 200 and doc["status"] == "degraded"
    assert doc["reasons"] == ["outbox_full", "watch_limit"]
    assert doc["details"] == {"outbox_full": "over budget"}

    health.set_unhealthy("bpf_lost")
    code, _, body = get(url + "/health")
    assert code == 503 and json.loads(body)["status"] == "unhealthy"

    health.clear("bpf_lost")
    health.clear("outbox_full")
    health.clear("watch_limit")
    code, _, body = get(url + "/health")
    assert code == 200 and json.loads(body)["status"] == "healthy"


def test_unknown_paths_are_404(served: tuple[str, Health, Outbox]) -> None:
    url, _, _ = served
    assert get(url + "/")[0] == 404
    assert get(url + "/api/v1/events")[0] == 404
    assert get(url + "/health?x=1")[0] == 200


def test_health_callback_errors_are_unhealthy() -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("boom")

    server = AgentHttpServer(broken, CollectorRegistry(), host="127.0.0.1", port=0).start()
    try:
        code, _, body = get(f"http://127.0.0.1:{server.port}/health")
    finally:
        server.stop()
    assert code == 503 and json.loads(body)["status"] == "unhealthy"


# ---- settings and logging ----------------------------------------------------------------


def test_settings_defaults_and_env(tmp_path: Path) -> None:
    s = AgentSettings.from_env({})
    assert s.api_server == "http://localhost:3000" and s.metrics_port == 9090
    assert s.log_level == "INFO" and s.node_name and s.agent_token is None
    assert s.outbox_budget_bytes == 1 << 30
    token_file = tmp_path / "tok"
    token_file.write_text(" first-token , second\n")
    s = AgentSettings.from_env(
        {
            "API_SERVER": "http://watcher-backend-service:3000/",
            "METRICS_PORT": "9191",
            "NODE_NAME": "node-7",
            "LOG_LEVEL": "debug",
            "WATCHER_AGENT_TOKEN_FILE": str(token_file),
            "WATCHER_OUTBOX_BUDGET_BYTES": "12345",
        }
    )
    assert s.api_server == "http://watcher-backend-service:3000"
    assert (s.metrics_port, s.node_name, s.log_level) == (9191, "node-7", "DEBUG")
    assert s.agent_token == "first-token" and "first-token" not in repr(s)
    assert s.outbox_budget_bytes == 12345
    both = {"WATCHER_AGENT_TOKEN": "env-a,env-b", "WATCHER_AGENT_TOKEN_FILE": str(token_file)}
    assert AgentSettings.from_env(both).agent_token == "env-a"
    for bad in ({"METRICS_PORT": "x"}, {"API_SERVER": "backend:3000"}, {"LOG_LEVEL": "LOUD"}):
        with pytest.raises(ConfigError):
            AgentSettings.from_env(bad)


def test_logging_redacts_tokens() -> None:
    redactor = Redactor(["s3cret-token-value"])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter(redactor))
    log = logging.getLogger("test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("header Authorization: Bearer abc.def-123 sent")
        log.warning("token is %s", "s3cret-token-value")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "abc.def-123" not in out and "s3cret-token-value" not in out
    assert out.count("[REDACTED]") == 2


def test_setup_logging_format(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        log = setup_logging("INFO", "watcher-filemon", tokens=["tok-123456"])
        setup_logging("INFO", "watcher-filemon", tokens=["tok-123456"])  # idempotent
        log.info("sending with tok-123456")
        try:
            raise ValueError("Bearer tok-123456")
        except ValueError:
            log.exception("failed")
        err = capsys.readouterr().err
    finally:
        for h in list(root.handlers):
            if h not in saved[1]:
                root.removeHandler(h)
        root.setLevel(saved[0])
    lines = err.splitlines()
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ INFO watcher-filemon: sending with \[REDACTED\]$",
        lines[0],
    )
    assert "tok-123456" not in err and err.count("sending with") == 1
