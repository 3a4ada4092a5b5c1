"""The compat write fast path (compat_fast.py) answers exactly like the declared routes.

Two apps on one database: ``fast`` (the default app) and ``slow`` (``compat_fast_path=
False``: FastAPI's routes only). Every request goes to both as raw ASGI, so status,
header list and body bytes are compared as sent. Good requests must be answered by the
fast path itself (its counter moves) and store the same event (re-sending it to the other
app is a duplicate: stored once); bad ones must get the route's own 401/403/413/422.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from watcher_backend.app import create_app
from watcher_backend.compat_fast import CompatWriteFastPath
from watcher_backend.config import Settings

S = "202012345"
AGENT_TOKEN, READER_TOKEN, ADMIN_TOKEN = "fast-agent-token", "fast-reader-token", "fast-admin"
JSON = [(b"content-type", b"application/json")]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class Pair:
    """The fast and the slow app, running, on the same database."""

    def __init__(self, fast: TestClient, slow: TestClient, fast_app: FastAPI) -> None:
        self.fast, self.slow, self.fast_app = fast, slow, fast_app

    def middleware(self) -> CompatWriteFastPath:
        layer: Any = self.fast_app.middleware_stack
        while not isinstance(layer, CompatWriteFastPath):
            layer = layer.app
        return layer

    def call(
        self,
        which: str,
        path: str,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        method: str = "POST",
    ) -> Answer:
        client = self.fast if which == "fast" else self.slow
        app = self.fast_app if which == "fast" else client.app
        assert client.portal is not None
        return client.portal.call(_asgi, app, method, path, body, headers)

    def both(
        self, path: str, body: bytes, headers: list[tuple[bytes, bytes]], *, first: str = "slow"
    ) -> tuple[Answer, Answer, int]:
        """(fast answer, slow answer, requests the fast path answered itself)."""
        before = self.middleware().answered
        order = ["slow", "fast"] if first == "slow" else ["fast", "slow"]
        got = {w: self.call(w, path, body, headers) for w in order}
        return got["fast"], got["slow"], self.middleware().answered - before


async def _asgi(
    app: Any, method: str, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> Answer:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-length", str(len(body)).encode()), *headers],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
    }
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start["headers"]), data


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        db_url=db_url,
        agent_tokens=(AGENT_TOKEN,),
        reader_tokens=(READER_TOKEN,),
        admin_tokens=(ADMIN_TOKEN,),
    )


@pytest.fixture
def pair(settings: Settings) -> Iterator[Pair]:
    fast_app = create_app(settings)
    slow_app = create_app(settings, compat_fast_path=False)
    with TestClient(fast_app) as fast, TestClient(slow_app) as slow:
        yield Pair(fast, slow, fast_app)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


AGENT = bearer(AGENT_TOKEN) + JSON


def reads(client: TestClient, sid: str) -> dict[str, Any]:
    h = {"Authorization": f"Bearer {READER_TOKEN}"}
    base = f"/api/os-1/hw1/{sid}"
    names = client.get(base, headers=h).json()
    out: dict[str, Any] = {"names": names}
    for name in names:
        out[name] = client.get(f"{base}/{name.replace('#', '%23')}", headers=h).json()
    out["build"] = client.get(f"{base}/logs/build", headers=h).json()
    out["run"] = client.get(f"{base}/logs/run", headers=h).json()
    r = client.get(f"/api/v1/classes/os-1/assignments/hw1/students/{sid}/files", headers=h)
    # 404: the student is unknown (nothing stored for them)
    out["files"] = (
        [] if r.status_code == 404 else sorted((f["path"], f["compat_name"]) for f in r.json())
    )
    return out


GOOD: list[tuple[str, Any, list[tuple[bytes, bytes]]]] = [
    ("main.c/20240301_100000", {"bytes": 10}, AGENT),
    ("main.c/20240301_100001.c", {"bytes": 0, "unknown": [1, {"x": None}]}, AGENT),
    ("src@list.c/20240301_100002", {"bytes": 2**53}, AGENT),
    ("test@file#1.cpp/20240301_100003", {"bytes": 7}, AGENT),
    ("테스트 파일.py/20240301_100004", {"bytes": 8}, bearer(ADMIN_TOKEN) + JSON),
    (
        "main.c/20240301_100005",
        {"bytes": 9},
        [
            (b"authorization", b"bearer  " + AGENT_TOKEN.encode() + b" "),
            (b"content-type", b"application/json; charset=utf-8"),
        ],
    ),
    (
        "logs/build",
        {
            "binary_path": "/usr/bin/gcc",
            "cmdline": "gcc -o main main.c",
            "exit_code": 0,
            "cwd": "/home/coder/project/hw1",
            "target_path": "/home/coder/project/hw1/main.c",
            "timestamp": "2024-03-01T10:00:00",
        },
        AGENT,
    ),
    (
        "logs/run",
        {
            "cmdline": "python3 'a b.py'",
            "exit_code": None,
            "cwd": "/home/coder/project/hw1",
            "target_path": "a b.py",
            "process_type": "python",
            "timestamp": "20240301_100010",
        },
        AGENT,
    ),
    ("logs/run", {"cmdline": "./main", "exit_code": 1, "timestamp": 1709254800}, AGENT),
]


def test_good_writes_are_answered_by_the_fast_path_like_the_routes(pair: Pair) -> None:
    fast_sid, slow_sid = "202000001", "202000002"
    for tail, body, headers in GOOD:
        raw = json.dumps(body).encode()
        before = pair.middleware().answered
        got_fast = pair.call("fast", f"/api/os-1/hw1/{fast_sid}/{tail}", raw, headers)
        got_slow = pair.call("slow", f"/api/os-1/hw1/{slow_sid}/{tail}", raw, headers)
        assert got_fast[0] == 200, got_fast
        assert got_fast == got_slow, tail
        assert pair.middleware().answered == before + 1, tail  # not handed to the route
    # The same data stored either way (paths, '@' reading, sizes, KST stamps, file_size).
    assert reads(pair.slow, fast_sid) == reads(pair.slow, slow_sid)
    assert reads(pair.slow, fast_sid)["files"] == [
        ("main.c", "main.c"),
        ("src/list.c", "src@list.c"),
        ("test/file#1.cpp", "test@file#1.cpp"),
        ("테스트 파일.py", "테스트 파일.py"),
    ]
    assert reads(pair.slow, fast_sid)["build"][0]["file_size"] == 9  # main.c's latest size
    # Same event ids: the request the fast path stored is a duplicate for the route.
    for tail, body, headers in GOOD:
        raw = json.dumps(body).encode()
        got = pair.call("slow", f"/api/os-1/hw1/{fast_sid}/{tail}", raw, headers)
        assert got[0] == 200, got
    assert reads(pair.slow, fast_sid) == reads(pair.slow, slow_sid)
    assert len(reads(pair.slow, fast_sid)["run"]) == 2


def test_at_name_prefers_an_existing_literal_file(pair: Pair) -> None:
    # A file really named "a@b.c" (via the v1 API) exists: "a@b.c" is that file, not a/b.c.
    event = {
        "kind": "file.snapshot",
        "event_id": "literal-name-1",
        "agent": "filemon",
        "agent_version": "t",
        "ts": "2024-03-01T00:00:00+00:00",
        "class_div": "os-1",
        "student_id": S,
        "assignment": "hw1",
        "path": "a@b.c",
        "size": 1,
        "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
        "content_b64": "YQ==",
    }
    r = pair.fast.post(
        "/api/v1/events",
        json={"events": [event]},
        headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
    )
    assert r.json()["results"][0]["status"] == "stored", r.text
    fast, slow, answered = pair.both(
        f"/api/os-1/hw1/{S}/a@b.c/20240301_100000", b'{"bytes":3}', AGENT
    )
    assert fast == slow and fast[0] == 200 and answered == 1
    assert reads(pair.slow, S)["files"] == [("a@b.c", "a@b.c")]


LONG = "x" * 5000
BAD: list[tuple[str, bytes, list[tuple[bytes, bytes]], int]] = [
    # auth: the route's 401 / 403 (with WWW-Authenticate)
    ("main.c/20240301_100000", b'{"bytes":1}', JSON, 401),
    ("main.c/20240301_100000", b'{"bytes":1}', bearer("nope") + JSON, 401),
    ("main.c/20240301_100000", b'{"bytes":1}', bearer(READER_TOKEN) + JSON, 403),
    ("main.c/20240301_100000", b'{"bytes":1}', [(b"authorization", b"Bearer "), *JSON], 401),
    (
        "main.c/20240301_100000",
        b'{"bytes":1}',
        [(b"authorization", b"Basic " + AGENT_TOKEN.encode()), *JSON],
        401,
    ),
    # body
    ("main.c/20240301_100000", b'{"bytes":-1}', AGENT, 422),
    ("main.c/20240301_100000", str({"bytes": 2**53 + 1}).encode(), AGENT, 422),
    ("main.c/20240301_100000", b'{"bytes":"ten"}', AGENT, 422),
    ("main.c/20240301_100000", b'{"bytes":null}', AGENT, 422),
    ("main.c/20240301_100000", b'{"size":1}', AGENT, 422),
    ("main.c/20240301_100000", b"[1]", AGENT, 422),
    ("main.c/20240301_100000", b'{"bytes":1', AGENT, 422),
    ("main.c/20240301_100000", b"", AGENT, 422),
    ("main.c/20240301_100000", b'{"bytes":1}', bearer(AGENT_TOKEN), 422),  # no content type
    (
        "main.c/20240301_100000",
        b'{"bytes":1}',
        [*bearer(AGENT_TOKEN), (b"content-type", b"text/plain")],
        422,
    ),
    ("main.c/20240301_100000", b"x" * (16 * 1024 * 1024 + 1), AGENT, 413),
    # coerced by the route (lax int), so left to it: same answer, same stored value
    ("main.c/20240301_100010", b'{"bytes":"12"}', AGENT, 200),
    ("main.c/20240301_100011", b'{"bytes":12.0}', AGENT, 200),
    ("main.c/20240301_100012", b'{"bytes":true}', AGENT, 200),
    # path
    ("main.c/2024-03-01", b'{"bytes":1}', AGENT, 422),
    ("main.c/20241301_100000", b'{"bytes":1}', AGENT, 422),
    ("main.c/20240230_100000", b'{"bytes":1}', AGENT, 422),
    ("main.c/20240301_240000", b'{"bytes":1}', AGENT, 422),
    ("main.c/20240301_100060", b'{"bytes":1}', AGENT, 422),
    ("a\x00b.c/20240301_100000", b'{"bytes":1}', AGENT, 422),
    ("../20240301_100000", b'{"bytes":1}', AGENT, 422),
    (f"{LONG}/20240301_100000", b'{"bytes":1}', AGENT, 422),  # wire path limit
    # logs
    ("logs/build", b'{"timestamp":"yesterday"}', AGENT, 422),
    ("logs/build", b'{"cmdline":"gcc"}', AGENT, 422),
    ("logs/run", b'{"timestamp":"20240301_100000","exit_code":"x"}', AGENT, 422),
    (
        "logs/run",
        b'{"timestamp":"20240301_100000","process_type":"' + b"p" * 40 + b'"}',
        AGENT,
        422,
    ),
    ("logs/run", b'{"timestamp":"20240301_100000","cwd":"' + LONG.encode() + b'"}', AGENT, 422),
    ("logs/build", b'{"timestamp":"2024-03-01T10:00:00"}', bearer(READER_TOKEN) + JSON, 403),
]


@pytest.mark.parametrize("tail, body, headers, status", BAD)
def test_bad_writes_get_the_routes_answer(
    pair: Pair, tail: str, body: bytes, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    fast, slow, answered = pair.both(f"/api/os-1/hw1/{S}/{tail}", body, headers)
    assert fast == slow
    assert fast[0] == status, fast
    if status != 200:
        assert answered == 0
        assert json.loads(fast[2])["detail"]
        assert reads(pair.slow, S)["files"] == []
        assert reads(pair.slow, S)["build"] == reads(pair.slow, S)["run"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/os/hw1/202012345/main.c/20240301_100000",  # class_div without division
        "/api/os-1/lab1/202012345/main.c/20240301_100000",  # not an assignment
        "/api/os-1/hw1/20-20/main.c/20240301_100000",  # not a student id
        "/api/os-1/lab1/202012345/logs/build",
        "/api/os/hw1/202012345/logs/run",
    ],
)
def test_bad_identities_get_the_routes_answer(pair: Pair, path: str) -> None:
    body = b'{"bytes":1,"timestamp":"2024-03-01T10:00:00"}'
    fast, slow, answered = pair.both(path, body, AGENT)
    assert fast == slow and fast[0] == 422 and answered == 0, fast


def test_other_routes_are_not_taken(pair: Pair) -> None:
    # A POST the fast path does not serve, and a GET of a write path, reach the router.
    fast, slow, answered = pair.both("/api/v1/events", b'{"events":[]}', AGENT)
    assert fast == slow and answered == 0
    fast, slow, answered = pair.both("/api/os-1/hw1", b'{"bytes":1}', AGENT)
    assert fast == slow and fast[0] in (404, 405) and answered == 0
    get_fast = pair.call("fast", f"/api/os-1/hw1/{S}/main.c/20240301_100000", b"", AGENT, "GET")
    get_slow = pair.call("slow", f"/api/os-1/hw1/{S}/main.c/20240301_100000", b"", AGENT, "GET")
    assert get_fast == get_slow


def test_fast_path_is_counted_under_the_route_template(pair: Pair) -> None:
    for i in range(3):
        got = pair.call(
            "fast", f"/api/os-1/hw1/{S}/main.c/20240301_10000{i}", b'{"bytes":1}', AGENT
        )
        assert got[0] == 200
    pair.call("fast", f"/api/os-1/hw1/{S}/main.c/bad", b'{"bytes":1}', AGENT)
    text = pair.fast.get("/metrics").text
    template = "/api/{class_div}/{hw_name}/{student_id}/{filename}/{stamp}"
    ok = f'http_requests_total{{method="POST",route="{template}",status="200"}} 3.0'
    bad = f'http_requests_total{{method="POST",route="{template}",status="422"}} 1.0'
    assert ok in text and bad in text
    assert S not in text  # no student id in any label


def _versions(client: TestClient, sid: str) -> dict[str, int]:
    r = client.get(
        f"/api/v1/classes/os-1/assignments/hw1/students/{sid}/files",
        headers={"Authorization": f"Bearer {READER_TOKEN}"},
    )
    return {f["path"]: f["versions"] for f in r.json()}


def test_cached_at_name_follows_a_new_literal_file(pair: Pair, db_url: str) -> None:
    # "x@y.c" is first read as x/y.c (cached on SQLite); once a file really named "x@y.c"
    # exists, the very next compat POST must go to it (the cache was invalidated).
    from watcher_backend import compat_names

    cache = compat_names.cache_for(pair.fast_app.state.engine)
    assert (cache is not None) == db_url.startswith("sqlite")
    for stamp in ("20240301_100000", "20240301_100001", "20240301_100002"):
        got = pair.call("fast", f"/api/os-1/hw1/{S}/x@y.c/{stamp}", b'{"bytes":1}', AGENT)
        assert got[0] == 200
        time.sleep(0.1)  # the file's creation blocks the cache until its barrier is back
    assert _versions(pair.fast, S) == {"x/y.c": 3}
    if cache is not None:
        assert cache.hits >= 1  # the later POSTs were answered from the cache
    event = {
        "kind": "file.snapshot",
        "event_id": "literal-name-2",
        "agent": "filemon",
        "agent_version": "t",
        "ts": "2024-03-01T00:00:00+00:00",
        "class_div": "os-1",
        "student_id": S,
        "assignment": "hw1",
        "path": "x@y.c",
        "size": 1,
        "sha256": "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb",
        "content_b64": "YQ==",
    }
    r = pair.fast.post(
        "/api/v1/events",
        json={"events": [event]},
        headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
    )
    assert r.json()["results"][0]["status"] == "stored", r.text
    got = pair.call("fast", f"/api/os-1/hw1/{S}/x@y.c/20240301_100003", b'{"bytes":2}', AGENT)
    assert got[0] == 200
    assert _versions(pair.fast, S) == {"x/y.c": 3, "x@y.c": 2}
    # and it stays so once the cache is open again
    for stamp in ("20240301_100004", "20240301_100005"):
        got = pair.call("fast", f"/api/os-1/hw1/{S}/x@y.c/{stamp}", b'{"bytes":3}', AGENT)
        assert got[0] == 200
    assert _versions(pair.fast, S) == {"x/y.c": 3, "x@y.c": 4}


def test_database_error_in_the_lookup_gets_the_routes_503(pair: Pair, db_url: str) -> None:
    # The '@' name needs the files table; without it both paths answer the route's 503.
    from sqlalchemy import create_engine

    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE files RENAME TO files_gone")
    try:
        fast, slow, answered = pair.both(
            f"/api/os-1/hw1/{S}/q@r.c/20240301_100000", b'{"bytes":1}', AGENT
        )
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE files_gone RENAME TO files")
        engine.dispose()
    assert fast == slow, (fast, slow)
    assert fast[0] == 503 and answered == 0, fast
