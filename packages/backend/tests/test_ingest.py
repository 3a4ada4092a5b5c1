"""POST /api/v1/events and the blob routes, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from starlette.testclient import TestClient

from watcher_common.wire import IngestResponse

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


def eid(prefix: str = "ev") -> str:
    return f"{prefix}-{next(_ids):010d}"


def base(kind: str, **kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": kind,
        "event_id": eid(kind.split(".")[1]),
        "agent": "filemon",
        "agent_version": "test",
        "ts": T0.isoformat(),
        "class_div": "os-1",
        "student_id": "202012345",
    }
    ev.update(kw)
    return ev


def snapshot(path: str, content: bytes, *, inline: bool = True, **kw: Any) -> dict[str, Any]:
    ev = base(
        "file.snapshot",
        assignment="hw1",
        path=path,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        **kw,
    )
    if inline:
        ev["content_b64"] = base64.b64encode(content).decode()
    return ev


def post(client: TestClient, headers: dict[str, str], events: list[Any]) -> list[dict[str, Any]]:
    r = client.post("/api/v1/events", json={"events": events}, headers=headers)
    assert r.status_code == 200, r.text
    IngestResponse.model_validate(r.json())  # the agents' view of the shape
    return list(r.json()["results"])


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [r["status"] for r in results]


def engine_of(client: TestClient) -> Engine:
    engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
    return engine


def rows(client: TestClient, sql: str, **params: Any) -> list[Any]:
    with engine_of(client).connect() as conn:
        return list(conn.execute(text(sql), params).all())


def test_stored_duplicate_rejected_per_event(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    good = snapshot("main.c", b"int main(){}\n")
    bad_path = snapshot("../etc/passwd", b"x")
    missing_field = base("process.run")  # no run_kind, tool, argv, start
    results = post(client, agent_headers, [good, bad_path, "not an object", missing_field, good])
    assert statuses(results) == ["stored", "rejected", "rejected", "rejected", "duplicate"]
    assert results[0]["event_id"] == good["event_id"]
    assert results[1]["event_id"] == bad_path["event_id"]
    assert "path" in results[1]["error"]
    assert results[2]["event_id"] == ""
    assert "run_kind" in results[3]["error"]
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 1


def test_idempotent_across_batches(client: TestClient, agent_headers: dict[str, str]) -> None:
    evs = [snapshot(f"f{i}.c", f"v{i}".encode()) for i in range(5)]
    assert statuses(post(client, agent_headers, evs[:3])) == ["stored"] * 3
    assert statuses(post(client, agent_headers, evs)) == ["duplicate"] * 3 + ["stored"] * 2
    assert statuses(post(client, agent_headers, evs)) == ["duplicate"] * 5
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 5
    assert rows(client, "SELECT count(*) FROM events")[0][0] == 5
    # the snapshots are the create/modify records: no file_events rows (migration 0008)
    assert rows(client, "SELECT count(*) FROM file_events")[0][0] == 0


def test_snapshot_versions_create_modify_and_identical(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    v1 = snapshot("src/a b#?@한글.c", b"one")
    v2 = snapshot("src/a b#?@한글.c", b"two")
    v2_again = snapshot("src/a b#?@한글.c", b"two")  # same content, new event: still a version
    assert statuses(post(client, agent_headers, [v1, v2, v2_again])) == ["stored"] * 3
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 3
    assert rows(client, "SELECT count(*) FROM file_events")[0][0] == 0
    f = rows(client, "SELECT path, compat_name, deleted, last_sha256 FROM files")
    assert f == [
        ("src/a b#?@한글.c", "src@a b#?@한글.c", False, hashlib.sha256(b"two").hexdigest())
    ]
    assert rows(client, "SELECT count(*) FROM blobs")[0][0] == 2  # deduplicated
    assert client.app.state.writer.cache.unchanged_snapshots == 1  # type: ignore[attr-defined]


def test_stored_content_is_not_stored_again_after_a_restart(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    """Dedupe does not depend on the writer's memory: with its cache gone (a restart),
    inline content already stored is found in the database (the blob table has no unique
    key on SQLite since 0011), also when an upload came in between."""
    writer = client.app.state.writer  # type: ignore[attr-defined]
    content = b"#include <stdio.h>\nint main(void) { return 0; }\n" * 3
    sha = hashlib.sha256(content).hexdigest()
    assert statuses(post(client, agent_headers, [snapshot("a.c", content)])) == ["stored"]
    big = b"x = 1\n" * 5000
    big_sha = hashlib.sha256(big).hexdigest()
    assert (
        client.put(f"/api/v1/blobs/{big_sha}", content=big, headers=agent_headers).status_code
        == 201
    )
    writer.cache.clear()
    again = [snapshot("b.c", content), snapshot("c.c", content), snapshot("d.py", big)]
    assert statuses(post(client, agent_headers, again)) == ["stored"] * 3
    assert (
        client.put(f"/api/v1/blobs/{big_sha}", content=big, headers=agent_headers).status_code
        == 200
    )
    assert rows(
        client, "SELECT sha256, count(*) FROM blobs GROUP BY sha256 ORDER BY sha256"
    ) == sorted([(sha, 1), (big_sha, 1)])


def test_inline_content_must_match(client: TestClient, agent_headers: dict[str, str]) -> None:
    wrong_hash = snapshot("a.c", b"abc")
    wrong_hash["sha256"] = hashlib.sha256(b"other").hexdigest()
    wrong_size = snapshot("b.c", b"abc")
    wrong_size["size"] = 4
    not_b64 = snapshot("c.c", b"abc")
    not_b64["content_b64"] = "***"
    no_content = snapshot("d.c", b"abc", inline=False)
    no_content.pop("sha256")
    results = post(client, agent_headers, [wrong_hash, wrong_size, not_b64, no_content])
    assert statuses(results) == ["rejected"] * 4
    assert "sha256" in results[0]["error"]
    assert "size" in results[1]["error"]
    assert "base64" in results[2]["error"]
    assert "metadata-only" in results[3]["error"]
    assert rows(client, "SELECT count(*) FROM events")[0][0] == 0  # nothing half-written
    assert rows(client, "SELECT count(*) FROM files")[0][0] == 0


def test_metadata_only_snapshots(client: TestClient, agent_headers: dict[str, str]) -> None:
    big = base("file.snapshot", assignment="hw1", path="big.bin", size=10**9, too_large=True)
    compat = base("file.snapshot", assignment="hw1", path="c.c", size=12, source="compat")
    assert statuses(post(client, agent_headers, [big, compat])) == ["stored", "stored"]
    assert rows(client, "SELECT size, sha256, too_large FROM snapshots ORDER BY id") == [
        (10**9, None, True),
        (12, None, False),
    ]


def test_snapshot_with_uploaded_blob(client: TestClient, agent_headers: dict[str, str]) -> None:
    content = b"#include <stdio.h>\n" * 1000
    sha = hashlib.sha256(content).hexdigest()
    ev = snapshot("big.c", content, inline=False)
    r = post(client, agent_headers, [ev])
    assert r == [{"event_id": ev["event_id"], "status": "retry", "error": "blob not uploaded"}]
    assert client.head(f"/api/v1/blobs/{sha}", headers=agent_headers).status_code == 404
    put = client.put(f"/api/v1/blobs/{sha}", content=content, headers=agent_headers)
    assert put.status_code == 201, put.text
    assert put.json() == {"sha256": sha, "size": len(content), "created": True}
    assert client.head(f"/api/v1/blobs/{sha}", headers=agent_headers).status_code == 200
    again = client.put(f"/api/v1/blobs/{sha}", content=content, headers=agent_headers)
    assert again.status_code == 200 and again.json()["created"] is False
    assert statuses(post(client, agent_headers, [ev])) == ["stored"]  # the retry now works
    stored = rows(client, "SELECT size, stored_size, codec FROM blobs")
    assert stored[0][0] == len(content) and stored[0][2] == "zstd" and stored[0][1] < 1000

    from watcher_backend.blobs import load_blob

    with engine_of(client).connect() as conn:
        assert load_blob(conn, sha) == content
        assert load_blob(conn, "0" * 64) is None


def test_blob_errors(client: TestClient, agent_headers: dict[str, str]) -> None:
    sha = hashlib.sha256(b"abc").hexdigest()
    r = client.put(f"/api/v1/blobs/{sha}", content=b"abd", headers=agent_headers)
    assert r.status_code == 422 and "sha256" in r.json()["detail"]
    for bad in ("xyz", sha.upper(), sha[:-1], sha + "0"):
        assert (
            client.put(f"/api/v1/blobs/{bad}", content=b"abc", headers=agent_headers).status_code
            == 422
        )
        assert client.head(f"/api/v1/blobs/{bad}", headers=agent_headers).status_code == 422
    # incompressible content is stored raw
    raw = os.urandom(500)
    raw_sha = hashlib.sha256(raw).hexdigest()
    assert (
        client.put(f"/api/v1/blobs/{raw_sha}", content=raw, headers=agent_headers).status_code
        == 201
    )
    assert rows(client, "SELECT codec FROM blobs WHERE sha256 = :s", s=raw_sha) == [("raw",)]
    empty_sha = hashlib.sha256(b"").hexdigest()
    assert (
        client.put(f"/api/v1/blobs/{empty_sha}", content=b"", headers=agent_headers).status_code
        == 201
    )


def test_delete_is_a_file_event_not_a_snapshot(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    v1 = snapshot("a.c", b"1")
    rm = base(
        "file.delete", assignment="hw1", path="a.c", ts=(T0 + timedelta(seconds=1)).isoformat()
    )
    v2 = snapshot("a.c", b"2", ts=(T0 + timedelta(seconds=2)).isoformat())
    assert statuses(post(client, agent_headers, [v1, rm])) == ["stored", "stored"]
    assert rows(client, "SELECT deleted FROM files") == [(True,)]
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 1
    assert statuses(post(client, agent_headers, [v2])) == ["stored"]
    ops = rows(client, "SELECT op, snapshot_id IS NULL FROM file_events ORDER BY ts_us")
    assert ops == [("delete", True)]
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 2
    assert rows(client, "SELECT deleted FROM files") == [(False,)]
    # deleting a path never seen still records the event
    ghost = base("file.delete", assignment="hw1", path="never.c")
    assert statuses(post(client, agent_headers, [ghost])) == ["stored"]
    assert rows(client, "SELECT deleted FROM files WHERE path = 'never.c'") == [(True,)]


def test_rename(client: TestClient, agent_headers: dict[str, str]) -> None:
    v1 = snapshot("old.c", b"code")
    mv = base("file.rename", assignment="hw1", path="new.c", old_path="old.c")
    assert statuses(post(client, agent_headers, [v1, mv])) == ["stored", "stored"]
    files = dict(
        (p, (d, s)) for p, d, s in rows(client, "SELECT path, deleted, last_sha256 FROM files")
    )
    assert files["old.c"] == (True, hashlib.sha256(b"code").hexdigest())
    assert files["new.c"] == (False, hashlib.sha256(b"code").hexdigest())
    ev = rows(
        client,
        "SELECT f.path, e.op, e.old_path FROM file_events e JOIN files f ON f.id = e.file_id "
        "ORDER BY e.id",
    )
    assert ev == [("new.c", "rename", "old.c")]
    assert rows(client, "SELECT count(*) FROM snapshots")[0][0] == 1


def test_process_run_with_sources_and_cell(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    run = base(
        "process.run",
        agent="procmon",
        assignment="hw1",
        run_kind="build",
        tool="gcc",
        argv=["gcc", "-o", "main", "main.c", "util.c"],
        start=T0.isoformat(),
        end=(T0 + timedelta(milliseconds=250)).isoformat(),
        exit_code=1,
        source_files=[
            {"path": "main.c", "sha256": "a" * 64, "size": 100},
            {"path": "util.c", "sha256": "b" * 64, "size": 23},
        ],
        diagnostics=[{"file": "main.c", "line": 3, "column": 5, "message": "expected ';'"}],
        stderr_excerpt="main.c:3:5: error: expected ';'",
    )
    no_asg = base(
        "process.run", run_kind="run", tool="python3", argv=["python3"], start=T0.isoformat()
    )
    cell = base("notebook.cell", assignment="hw1", notebook="a.ipynb", status="error", ename="E")
    assert statuses(post(client, agent_headers, [run, no_asg, cell])) == ["stored"] * 3
    r = rows(
        client,
        "SELECT category, tool, exit_code, file_size, end_us - start_us, assignment_id IS NULL, "
        "argv, diagnostics FROM runs ORDER BY id",
    )
    assert r[0][:6] == ("build", "gcc", 1, 123, 250_000, False)
    argv = r[0][6] if isinstance(r[0][6], list) else json.loads(r[0][6])
    assert argv == ["gcc", "-o", "main", "main.c", "util.c"]
    diags = r[0][7] if isinstance(r[0][7], list) else json.loads(r[0][7])
    assert diags[0]["message"] == "expected ';'" and diags[0]["line"] == 3
    assert r[1][:6] == ("run", "python3", None, 0, None, True)
    src = rows(client, "SELECT path, sha256, size FROM run_sources ORDER BY id")
    assert src == [("main.c", "a" * 64, 100), ("util.c", "b" * 64, 23)]
    assert rows(client, "SELECT notebook, status, ename FROM notebook_cells") == [
        ("a.ipynb", "error", "E")
    ]


def test_identity_is_checked(client: TestClient, agent_headers: dict[str, str]) -> None:
    ok = snapshot("a.c", b"1", class_div="data-structure-1")
    no_division = snapshot("a.c", b"1", class_div="os-x1")
    bad_student = snapshot("a.c", b"1", student_id="abc-1")
    results = post(client, agent_headers, [ok, no_division, bad_student])
    assert statuses(results) == ["stored", "rejected", "rejected"]
    assert results[1]["error"].startswith("identity:")
    assert rows(client, "SELECT class_div, subject, division FROM classes") == [
        ("data-structure-1", "data-structure", "1")
    ]
    # a rejected event's id is not consumed: a corrected re-send is stored
    fixed = dict(no_division, class_div="os-2")
    assert statuses(post(client, agent_headers, [fixed])) == ["stored"]


def test_body_errors_are_4xx_never_500(client: TestClient, agent_headers: dict[str, str]) -> None:
    h = agent_headers
    url = "/api/v1/events"
    for body in (b"", b"{", b"[]", b'{"events": 3}', b"\xff\xfe", b"[" * 100_000, b'"x"'):
        r = client.post(url, content=body, headers=h)
        assert r.status_code == 422, (body[:10], r.status_code)
        assert isinstance(r.json()["detail"], str)
    r = client.post(url, json={"events": []}, headers=h)
    assert r.status_code == 200 and r.json() == {"results": []}
    # batch count limit
    too_many = client.app.state.settings.max_batch_events + 1  # type: ignore[attr-defined]
    r = client.post(url, json={"events": [{}] * too_many}, headers=h)
    assert r.status_code == 413 and "too many events" in r.json()["detail"]


def test_body_size_limit(db_url: str, agent_headers: dict[str, str]) -> None:
    from watcher_backend.app import create_app
    from watcher_backend.config import Settings

    token = agent_headers["Authorization"].removeprefix("Bearer ")
    s = Settings(db_url=db_url, agent_tokens=(token,), max_body_bytes=1000, max_blob_bytes=2000)
    with TestClient(create_app(s)) as c:
        big = json.dumps({"events": [], "pad": "x" * 2000}).encode()
        r = c.post("/api/v1/events", content=big, headers=agent_headers)
        assert r.status_code == 413 and "too large" in r.json()["detail"]

        def chunks() -> Any:  # no Content-Length: counted while reading
            yield b'{"events": [], "pad": "'
            for _ in range(20):
                yield b"x" * 100
            yield b'"}'

        r = c.post("/api/v1/events", content=chunks(), headers=agent_headers)
        assert r.status_code == 413
        blob = b"y" * 1500  # over the body limit but under the blob limit
        sha = hashlib.sha256(blob).hexdigest()
        assert c.put(f"/api/v1/blobs/{sha}", content=blob, headers=agent_headers).status_code == 201
        blob = b"y" * 2500
        sha = hashlib.sha256(blob).hexdigest()
        assert c.put(f"/api/v1/blobs/{sha}", content=blob, headers=agent_headers).status_code == 413


def test_inline_content_fast_path_codecs(client: TestClient, agent_headers: dict[str, str]) -> None:
    """The batch prepare's inlined path (msgspec events) stores what pack_blob would: zstd
    with the source dictionary for small files, plain zstd for large ones, raw for short or
    incompressible content, bytes unchanged."""
    from watcher_backend.blobs import DICT_MAX, load_blob, pack_blob
    from watcher_backend.ingest import parse_batch
    from watcher_backend.wire_fast import FastFileSnapshot

    contents = [
        b"int main(void) { return 0; }\n" * 40,
        b"tiny",
        os.urandom(300),
        b"#include <stdio.h>\n" * (DICT_MAX // 19 + 1),  # just above DICT_MAX
        b"x" * DICT_MAX,  # exactly DICT_MAX: still the dictionary
    ]
    evs = [snapshot(f"p{i}.c", c) for i, c in enumerate(contents)]
    parsed = parse_batch(json.dumps({"events": evs}).encode(), 100)
    assert all(type(p.event) is FastFileSnapshot for p in parsed.valid)
    codecs = [p.blob.codec if p.blob else None for p in parsed.valid]
    assert codecs == ["zstd-d1", "raw", "raw", "zstd", "zstd-d1"]
    for p, c in zip(parsed.valid, contents, strict=True):
        assert p.blob == pack_blob(hashlib.sha256(c).hexdigest(), c)
    assert statuses(post(client, agent_headers, evs)) == ["stored"] * 5
    with engine_of(client).connect() as conn:
        for c in contents:
            assert load_blob(conn, hashlib.sha256(c).hexdigest()) == c


def test_lone_surrogate_in_a_rejected_id_is_answered(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    # JSON may escape a lone surrogate; it cannot be encoded as UTF-8, so the answer
    # escapes it again (this was a 500) and the valid event next to it is still stored
    good = snapshot("ok.c", b"ok")
    body = (
        '{"events": [{"kind": "file.nope", "event_id": "bad\\ud800id"}, ' + json.dumps(good) + "]}"
    )
    r = client.post(
        "/api/v1/events",
        content=body.encode(),
        headers={**agent_headers, "content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    res = json.loads(r.content)["results"]
    assert [x["status"] for x in res] == ["rejected", "stored"]
    assert res[0]["event_id"] == "bad\ud800id"


def test_snapshot_columns_in_a_mixed_batch(
    client: TestClient, agent_headers: dict[str, str]
) -> None:
    """One batch whose snapshots differ in the columns the writer binds once per group of
    rows (source, reconciled, too_large, node): every row keeps its own values, and ids
    follow the events' order."""
    variants: list[dict[str, Any]] = [
        {"node": "node-a"},
        {"node": "node-b", "reconciled": True},
        {"node": "node-a", "source": "procmon"},
        {"node": "node-b", "too_large": True},  # hashed, not uploaded: metadata only
        {"node": "node-a"},
        {"node": "", "source": "procmon", "reconciled": True},
    ]
    evs = []
    for i, v in enumerate(variants):
        content = f"int v{i};\n".encode() * 30
        evs.append(snapshot(f"mix{i}.c", content, inline=not v.get("too_large"), **v))
    assert statuses(post(client, agent_headers, evs)) == ["stored"] * len(evs)
    ids = tuple(e["event_id"] for e in evs)
    got = [
        r
        for r in rows(
            client,
            "SELECT event_id, source, reconciled, too_large, node, size, sha256 "
            "FROM snapshots ORDER BY id",
        )
        if r[0] in ids
    ]
    want = [
        (
            e["event_id"],
            e.get("source", "filemon"),
            bool(e.get("reconciled", False)),
            bool(e.get("too_large", False)),
            e.get("node", ""),
            e["size"],
            e["sha256"],
        )
        for e in evs
    ]
    assert [(r[0], r[1], bool(r[2]), bool(r[3]), r[4], r[5], r[6]) for r in got] == want
    kinds = {r[0]: r[1] for r in rows(client, "SELECT event_id, kind FROM events")}
    assert [kinds.get(i) for i in ids] == ["file.snapshot"] * len(evs)
