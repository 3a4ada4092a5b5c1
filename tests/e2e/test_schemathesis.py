"""Schemathesis against the backend's own OpenAPI document, with a valid (admin) token: every
operation, schema-conforming and schema-violating inputs, 0 server errors.

The backend is a separate process with its own SQLite file (the admin token may call every
route, writes included: the session backend's data is never touched). A few events are
ingested first so that reads can find something; ``E2E_SCHEMATHESIS_EXAMPLES`` bounds the
examples per operation and generation mode (default 10: ~700 calls, 15-40 s on the 2-core
CI machine depending on its load; 60 finds nothing more and takes minutes).
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from watcher_common.outbox import prepare_event
from watcher_common.wire import Diagnostic, FileSnapshot, ProcessRun, SourceFile

from .procs import ADMIN, AGENT, READER, Service, bin_path, free_port
from .students import sha

EXAMPLES = int(os.environ.get("E2E_SCHEMATHESIS_EXAMPLES", "10"))

SEED_SOURCE = b"#include <stdio.h>\nint main(void) { return 0 }\n"


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp: Path = tmp_path_factory.mktemp("e2e-schemathesis")
    port = free_port()
    svc = Service(
        "backend-fuzz",
        [bin_path("watcher-backend")],
        {
            "PORT": str(port),
            "DB_URL": f"sqlite:///{tmp / 'fuzz.db'}",
            "WATCHER_AGENT_TOKEN": AGENT,
            "WATCHER_READER_TOKEN": READER,
            "WATCHER_ADMIN_TOKEN": ADMIN,
            "LOG_LEVEL": "INFO",
        },
        tmp / "backend.log",
        "API endpoints ready",
    )
    try:
        svc.start()
        _seed(f"http://127.0.0.1:{port}")
        yield svc
        assert svc.running, f"the backend died under fuzzing:\n{svc.text()[-4000:]}"
    finally:
        svc.stop()
        print(f"fuzzed backend log: {svc.log}")


def _seed(url: str) -> None:
    """Two versions of a file and a failed build that compiled the second one."""
    ts = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    common = {"agent": "e2e", "agent_version": "0", "class_div": "os-1", "student_id": "202500001"}
    events = []
    for i, code in enumerate([b"int main(void) { return 0; }\n", SEED_SOURCE]):
        snap = FileSnapshot(
            event_id=f"fuzz-seed-snap-{i}", ts=ts + timedelta(seconds=i), assignment="hw1",
            path="main.c", size=len(code), **common,
        )  # fmt: skip
        events.append(prepare_event(snap, code)[0])
    events.append(
        ProcessRun(
            event_id="fuzz-seed-run-0",
            ts=ts + timedelta(seconds=5),
            assignment="hw1",
            run_kind="build",
            tool="gcc",
            argv=["gcc", "-o", "main", "main.c"],
            cwd="/home/coder/project/hw1",
            start=ts + timedelta(seconds=5),
            end=ts + timedelta(seconds=6),
            exit_code=1,
            source_files=[SourceFile(path="main.c", sha256=sha(SEED_SOURCE))],
            diagnostics=[Diagnostic(file="main.c", line=2, message="expected ';'")],
            **common,
        )
    )
    body = {"events": [e.model_dump(mode="json", exclude_none=True) for e in events]}
    r = httpx.post(
        f"{url}/api/v1/events", json=body, headers={"Authorization": f"Bearer {AGENT}"}, timeout=15
    )
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {"stored"}, r.text


def _fuzz(
    op: schemathesis.APIOperation,
    mode: GenerationMode,
    url: str,
    failures: list[str],
    statuses: Counter[int],
    refused: set[str],
) -> int:
    """``EXAMPLES`` generated calls of one operation; server errors are collected (not
    raised: every operation gets its turn and the report lists them all)."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    calls = 0
    session = requests.Session()  # keep-alive: the run is bound by round trips

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same inputs every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal calls
        calls += 1
        response = case.call(base_url=url, session=session, headers=headers, timeout=30)
        statuses[response.status_code] += 1
        if mode is GenerationMode.POSITIVE and response.status_code in (401, 403):
            refused.add(op.label)
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except FailureGroup as exc:  # a BaseExceptionGroup
            failures.append(
                f"{op.label} [{mode.value}] -> {response.status_code}\n"
                f"  {case.as_curl_command(headers=headers)}\n  {exc}"
            )

    try:
        run()
    except Unsatisfiable:
        # an operation without parameters or body has no invalid input to generate
        assert mode is GenerationMode.NEGATIVE and calls == 0, op.label
    finally:
        session.close()
    return calls


def _backend_errors(log: str) -> str:
    """The backend's own frames of each unhandled exception in its log."""
    keep = [
        ln
        for ln in log.splitlines()
        if "unhandled" in ln or "watcher_backend/" in ln or re.match(r"^\w+Error: ", ln)
    ]
    return "\n".join(keep[-60:])


def test_openapi_no_server_errors(backend: Service) -> None:
    url = f"http://127.0.0.1:{backend.env['PORT']}"
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    refused: set[str] = set()  # operations that refused the admin token on valid input
    calls = 0
    ops = 0
    t0 = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        ops += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls += _fuzz(op, mode, url, failures, statuses, refused)
    took = time.monotonic() - t0
    print(f"schemathesis: {ops} operations, {calls} calls in {took:.1f}s, {len(failures)} 5xx")
    print(f"  statuses: {dict(sorted(statuses.items()))}")
    assert ops >= 30 and calls > ops
    # the token was accepted: valid input got past authentication everywhere except the UI
    # login (a made-up password); schema-violating input may break the Authorization header
    # itself, which must be a 401, never a 5xx
    assert refused <= {"POST /ui/session"}, refused
    assert statuses[200] > calls // 5, statuses
    assert not failures, "\n".join(failures[:20]) + "\n" + _backend_errors(backend.text())


def test_out_of_range_ids_are_client_errors(backend: Service) -> None:
    """What schemathesis found first (OverflowError in the SQLite driver: 500): numbers
    past 64 bits in ids and thresholds are refused as input, never a server error."""
    big = 10**23
    auth = {"Authorization": f"Bearer {ADMIN}"}
    base = f"http://127.0.0.1:{backend.env['PORT']}"
    urls = [
        f"/api/v1/diff?from={big}&to=1",
        f"/api/v1/snapshots/{big}",
        f"/api/v1/snapshots/{-big}/content",
        f"/api/v1/runs/{big}",
        f"/api/v1/classes/os-1/assignments/hw1/summary?paste_bytes={big}",
        f"/api/v1/classes/os-1/assignments/hw1/students/202500001/analytics?paste_bytes={big}",
    ]
    with httpx.Client(base_url=base, headers=auth, timeout=15) as c:
        got = {u: c.get(u).status_code for u in urls}
        assert set(got.values()) == {422}, got
        assert c.get(f"/api/v1/snapshots/{2**63 - 1}").status_code == 404
