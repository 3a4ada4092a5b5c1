"""Query API v1: listings, timeline pagination, versions, content, diffs and run details,
on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import difflib
import hashlib
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

S = "202012345"
BASE = f"/api/v1/classes/os-1/assignments/hw1/students/{S}"
T0 = datetime(2024, 3, 1, 1, 0, tzinfo=UTC)  # 10:00 KST

_seq = 0


def _common(kind: str, ts: datetime, sid: str = S, hw: str = "hw1") -> dict[str, Any]:
    global _seq
    _seq += 1
    return {
        "kind": kind,
        "event_id": f"q-{_seq:08d}-{random.getrandbits(32):08x}",
        "agent": "test",
        "agent_version": "test",
        "ts": ts.isoformat(),
        "class_div": "os-1",
        "student_id": sid,
        "assignment": hw,
    }


def snap(path: str, ts: datetime, content: bytes, **kw: Any) -> dict[str, Any]:
    return {
        **_common("file.snapshot", ts, **kw),
        "path": path,
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
        "content_b64": base64.b64encode(content).decode(),
    }


def delete(path: str, ts: datetime) -> dict[str, Any]:
    return {**_common("file.delete", ts), "path": path}


def rename(old: str, new: str, ts: datetime) -> dict[str, Any]:
    return {**_common("file.rename", ts), "path": new, "old_path": old}


def cell(ts: datetime, index: int, status: str = "ok") -> dict[str, Any]:
    return {
        **_common("notebook.cell", ts),
        "notebook": "lab.ipynb",
        "cell_index": index,
        "execution_count": index + 1,
        "status": status,
        "ename": "ValueError" if status == "error" else None,
        "duration_ms": 12.5,
        "source": "print(1)",
    }


def run(kind: str, argv: list[str], start: datetime, **kw: Any) -> dict[str, Any]:
    sid = kw.pop("sid", S)
    return {
        **_common("process.run", start, sid=sid),
        "run_kind": kind,
        "tool": argv[0],
        "exe": f"/usr/bin/{argv[0]}",
        "argv": argv,
        "cwd": "/home/coder/project/hw1",
        "start": start.isoformat(),
        "end": (start + timedelta(milliseconds=250)).isoformat(),
        "exit_code": 0,
        **kw,
    }


def ingest(client: TestClient, headers: dict[str, str], events: list[dict[str, Any]]) -> None:
    r = client.post("/api/v1/events", json={"events": events}, headers=headers)
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} <= {"stored", "duplicate"}, r.json()


def utc_text(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _versions(client: TestClient, h: dict[str, str], path: str) -> list[dict[str, Any]]:
    r = client.get(f"{BASE}/files/versions", params={"path": path}, headers=h)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()
    return result


# ---- listings -------------------------------------------------------------------------------


def test_classes_assignments_students(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    ingest(
        client,
        agent_headers,
        [
            snap("a.c", T0, b"a"),
            snap("a.c", T0 + timedelta(minutes=1), b"ab"),
            snap("b.c", T0, b"b", sid="202000001"),
            snap("x.c", T0, b"x", hw="hw2"),
            run("build", ["gcc", "a.c"], T0 + timedelta(minutes=2)),
            run("run", ["./a.out"], T0 + timedelta(minutes=3)),
            cell(T0 + timedelta(minutes=4), 0),
        ],
    )
    h = reader_headers
    classes = client.get("/api/v1/classes", headers=h).json()
    assert classes == [
        {"class_div": "os-1", "subject": "os", "division": "1", "students": 2, "assignments": 2}
    ]
    asgs = client.get("/api/v1/classes/os-1/assignments", headers=h).json()
    assert [(a["name"], a["students"], a["snapshots"], a["builds"], a["runs"]) for a in asgs] == [
        ("hw1", 2, 3, 1, 1),
        ("hw2", 1, 1, 0, 0),
    ]
    assert asgs[0]["first_snapshot"] == utc_text(T0)
    assert asgs[0]["last_snapshot"] == utc_text(T0 + timedelta(minutes=1))
    students = client.get("/api/v1/classes/os-1/students", headers=h).json()
    assert [
        (s["student_id"], s["files"], s["snapshots"], s["builds"], s["runs"], s["cells"])
        for s in students
    ] == [("202000001", 1, 1, 0, 0, 0), (S, 2, 3, 1, 1, 1)]
    assert students[1]["last_activity"] == utc_text(T0 + timedelta(minutes=4))
    only_hw2 = client.get(
        "/api/v1/classes/os-1/students", params={"assignment": "hw2"}, headers=h
    ).json()
    assert [(s["student_id"], s["snapshots"]) for s in only_hw2] == [("202000001", 0), (S, 1)]
    assert client.get("/api/v1/classes/os-9/assignments", headers=h).status_code == 404
    assert client.get("/api/v1/classes/os-9/students", headers=h).status_code == 404
    assert client.get("/api/v1/classes", headers=agent_headers).status_code == 403
    assert client.get("/api/v1/classes").status_code == 401


def test_files_versions_delete_rename(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    ingest(
        client,
        agent_headers,
        [
            snap("src/main.c", T0, b"v1"),
            snap("src/main.c", T0 + timedelta(seconds=5), b"v2!"),
            snap("old.c", T0, b"old"),
            rename("old.c", "new.c", T0 + timedelta(seconds=10)),
            snap("tmp.c", T0, b"tmp"),
            delete("tmp.c", T0 + timedelta(seconds=20)),
        ],
    )
    h = reader_headers
    files = {f["path"]: f for f in client.get(f"{BASE}/files", headers=h).json()}
    assert sorted(files) == ["new.c", "old.c", "src/main.c", "tmp.c"]
    assert files["src/main.c"]["compat_name"] == "src@main.c"
    assert (files["src/main.c"]["versions"], files["src/main.c"]["last_size"]) == (2, 3)
    assert files["src/main.c"]["last_version"] == utc_text(T0 + timedelta(seconds=5))
    assert files["tmp.c"]["deleted"] is True
    assert files["old.c"]["deleted"] is True
    assert files["new.c"]["deleted"] is False
    assert files["new.c"]["versions"] == 0

    versions = _versions(client, h, "src/main.c")
    assert [(v["size"], v["ts"], v["has_content"]) for v in versions] == [
        (2, utc_text(T0), True),
        (3, utc_text(T0 + timedelta(seconds=5)), True),
    ]
    v = versions[1]
    assert v["sha256"] == hashlib.sha256(b"v2!").hexdigest()
    assert (v["class_div"], v["student_id"], v["assignment"], v["path"]) == (
        "os-1",
        S,
        "hw1",
        "src/main.c",
    )
    r = client.get(f"{BASE}/files/versions", params={"path": "nope.c"}, headers=h)
    assert r.status_code == 404
    assert client.get(f"{BASE}/files".replace(S, "1"), headers=h).status_code == 404


# ---- snapshots, content, diff ----------------------------------------------------------------


def test_snapshot_content_and_diff(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    old = "#include <stdio.h>\nint main() {\n  return 0;\n}\n"
    new = '#include <stdio.h>\nint main() {\n  puts("안녕");\n  return 1;\n}'  # no final newline
    ingest(
        client,
        agent_headers,
        [
            snap("main.c", T0, old.encode()),
            snap("main.c", T0 + timedelta(seconds=30), new.encode()),
            snap("blob.bin", T0, b"\x00\x01\x02binary"),
            snap("latin.txt", T0, "café".encode("latin-1")),
        ],
    )
    # a metadata-only snapshot, as the old agents send
    r = client.post(
        f"/api/os-1/hw1/{S}/meta.c/20240301_100000.c", json={"bytes": 9}, headers=agent_headers
    )
    assert r.status_code == 200, r.text
    h = reader_headers
    v_old, v_new = (v["snapshot_id"] for v in _versions(client, h, "main.c"))
    (binary,) = (v["snapshot_id"] for v in _versions(client, h, "blob.bin"))
    (latin,) = (v["snapshot_id"] for v in _versions(client, h, "latin.txt"))
    (meta,) = _versions(client, h, "meta.c")
    assert (meta["sha256"], meta["has_content"], meta["size"], meta["source"]) == (
        None,
        False,
        9,
        "compat",
    )

    info = client.get(f"/api/v1/snapshots/{v_new}", headers=h).json()
    assert (info["path"], info["size"], info["ts"]) == (
        "main.c",
        len(new.encode()),
        utc_text(T0 + timedelta(seconds=30)),
    )
    content = client.get(f"/api/v1/snapshots/{v_new}/content", headers=h)
    assert content.status_code == 200
    assert content.headers["content-type"] == "application/octet-stream"
    assert content.content == new.encode()
    raw = client.get(f"/api/v1/snapshots/{binary}/content", headers=h)
    assert raw.content == b"\x00\x01\x02binary"
    assert (
        client.get(f"/api/v1/snapshots/{meta['snapshot_id']}/content", headers=h).status_code == 404
    )
    assert client.get("/api/v1/snapshots/999999", headers=h).status_code == 404
    assert client.get("/api/v1/snapshots/999999/content", headers=h).status_code == 404

    r = client.get("/api/v1/diff", params={"from": v_old, "to": v_new}, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    lines = text.splitlines()
    assert lines[0].startswith("--- a/main.c\t2024-03-01T01:00:00")
    assert lines[1].startswith("+++ b/main.c\t2024-03-01T01:00:30")
    expected_body = [
        ln.rstrip("\n")
        for ln in difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), "a", "b"
        )
    ][2:]
    body = [ln for ln in lines[2:] if ln != "\\ No newline at end of file"]
    assert body == expected_body
    assert '+  puts("안녕");' in lines
    assert "-  return 0;" in lines and "+  return 1;" in lines
    assert "-}" in lines and "+}" in lines
    assert lines[-1] == "\\ No newline at end of file"

    same = client.get("/api/v1/diff", params={"from": v_old, "to": v_old}, headers=h)
    assert (same.status_code, same.text) == (200, "")
    for a, b, status in (
        (v_old, binary, 422),
        (latin, v_old, 422),
        (v_old, meta["snapshot_id"], 422),
        (v_old, 999999, 404),
        (999999, v_old, 404),
    ):
        r = client.get("/api/v1/diff", params={"from": a, "to": b}, headers=h)
        assert r.status_code == status, (a, b, r.text)
    assert client.get("/api/v1/diff", params={"from": v_old}, headers=h).status_code == 422


def test_content_and_diff_cache_headers(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    """Content and diffs are fixed by their ids: an ETag to revalidate (304, no body), kept
    privately by the browser; the answers read from the blob cache stay exact."""
    old, new = b"int a;\n", b"int a;\nint b;\n"
    ingest(
        client, agent_headers, [snap("c.c", T0, old), snap("c.c", T0 + timedelta(seconds=9), new)]
    )
    h = reader_headers
    v_old, v_new = (v["snapshot_id"] for v in _versions(client, h, "c.c"))

    first = client.get(f"/api/v1/snapshots/{v_new}/content", headers=h)
    assert first.content == new
    assert first.headers["etag"] == f'"{hashlib.sha256(new).hexdigest()}"'
    assert first.headers["cache-control"].startswith("private")
    again = client.get(f"/api/v1/snapshots/{v_new}/content", headers=h)  # from the cache
    assert again.content == new
    r = client.get(
        f"/api/v1/snapshots/{v_new}/content",
        headers={**h, "If-None-Match": first.headers["etag"]},
    )
    assert (r.status_code, r.content) == (304, b"")
    other = client.get(
        f"/api/v1/snapshots/{v_old}/content",
        headers={**h, "If-None-Match": first.headers["etag"]},
    )
    assert (other.status_code, other.content) == (200, old)

    d = client.get("/api/v1/diff", params={"from": v_old, "to": v_new}, headers=h)
    assert d.status_code == 200 and "+int b;" in d.text.splitlines()
    etag = d.headers["etag"]
    r = client.get(
        "/api/v1/diff", params={"from": v_old, "to": v_new}, headers={**h, "If-None-Match": etag}
    )
    assert (r.status_code, r.content) == (304, b"")
    back = client.get(
        "/api/v1/diff", params={"from": v_new, "to": v_old}, headers={**h, "If-None-Match": etag}
    )
    assert back.status_code == 200 and "-int b;" in back.text.splitlines()
    # an ETag never turns an unknown id into a 304
    r = client.get(
        "/api/v1/diff", params={"from": v_old, "to": 999999}, headers={**h, "If-None-Match": etag}
    )
    assert r.status_code == 404


# ---- runs ----------------------------------------------------------------------------------------


def test_run_details(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    code = b"int main() { return 0 }\n"
    sha = hashlib.sha256(code).hexdigest()
    other = hashlib.sha256(b"never saved").hexdigest()
    diag = {
        "file": "my file.c",
        "line": 1,
        "column": 22,
        "severity": "error",
        "message": "expected ';' before '}' token",
    }
    ingest(
        client,
        agent_headers,
        [
            snap("my file.c", T0, code),
            snap("my file.c", T0 + timedelta(minutes=5), b"later"),
            run(
                "build",
                ["gcc", "-Wall", "-o", "prog", "my file.c"],
                T0 + timedelta(minutes=1),
                exit_code=1,
                tool="gcc",
                pid=4242,
                ppid=1,
                uid=1000,
                hostname="jcode-os-1-202012345-abc12-xyz45",
                output_path="prog",
                diagnostics=[diag],
                stderr_excerpt="my file.c:1:22: error: expected ';'",
                source_files=[
                    {"path": "my file.c", "sha256": sha, "size": len(code)},
                    {"path": "/usr/include/stdio.h", "sha256": other, "size": 10},
                ],
            ),
        ],
    )
    h = reader_headers
    (item,) = client.get(f"{BASE}/timeline", params={"kinds": "build"}, headers=h).json()["items"]
    detail = client.get(f"/api/v1/runs/{item['run_id']}", headers=h).json()
    (snapshot_id,) = (
        v["snapshot_id"] for v in _versions(client, h, "my file.c") if v["sha256"] == sha
    )
    assert detail["argv"] == ["gcc", "-Wall", "-o", "prog", "my file.c"]
    assert detail["diagnostics"] == [diag]
    assert detail["sources"] == [
        {"path": "my file.c", "sha256": sha, "size": len(code), "snapshot_id": snapshot_id},
        {"path": "/usr/include/stdio.h", "sha256": other, "size": 10, "snapshot_id": None},
    ]
    assert detail["file_size"] == len(code) + 10
    assert (detail["exit_code"], detail["category"], detail["tool"], detail["pid"]) == (
        1,
        "build",
        "gcc",
        4242,
    )
    assert (detail["class_div"], detail["student_id"], detail["assignment"]) == ("os-1", S, "hw1")
    assert detail["start"] == utc_text(T0 + timedelta(minutes=1))
    assert detail["duration_ms"] == 250.0
    assert detail["stderr_excerpt"].startswith("my file.c:1:22")
    assert detail["output_path"] == "prog"
    assert client.get("/api/v1/runs/999999", headers=h).status_code == 404


def test_run_sources_find_the_version_the_run_used(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    """The saved version a run's source hash points at: the latest at or before the run's
    start, else the first after it; the run's assignment before the student's others."""
    a, b, c = b"int a;\n", b"int b;\n", b"int c;\n"
    sha = {x: hashlib.sha256(x).hexdigest() for x in (a, b, c)}
    m = timedelta(minutes=1)
    ingest(
        client,
        agent_headers,
        [
            snap("main.c", T0, a),
            snap("main.c", T0 + m, b),
            snap("main.c", T0 + 3 * m, a),
            snap("other.c", T0 + m, c, hw="hw2"),
            snap("late.c", T0 + m, b, hw="hw2"),
        ],
    )

    def src(x: bytes) -> dict[str, Any]:
        return {"path": "main.c", "sha256": sha[x], "size": len(x)}

    ingest(
        client,
        agent_headers,
        [
            run("build", ["gcc", "main.c"], T0 + 2 * m, source_files=[src(a), src(b), src(c)]),
            run("build", ["gcc", "main.c"], T0 - m, source_files=[src(a)]),
        ],
    )
    h = reader_headers
    hw1 = {(v["sha256"], v["ts"]): v["snapshot_id"] for v in _versions(client, h, "main.c")}
    r = client.get(
        f"/api/v1/classes/os-1/assignments/hw2/students/{S}/files/versions",
        params={"path": "other.c"},
        headers=h,
    )
    (in_hw2,) = (v["snapshot_id"] for v in r.json())
    items = client.get(f"{BASE}/timeline", params={"kinds": "build"}, headers=h).json()["items"]
    by_start = {}
    for item in items:
        detail = client.get(f"/api/v1/runs/{item['run_id']}", headers=h).json()
        by_start[detail["start"]] = [s["snapshot_id"] for s in detail["sources"]]
    assert by_start[utc_text(T0 + 2 * m)] == [
        hw1[(sha[a], utc_text(T0))],  # not the later save of the same bytes
        hw1[(sha[b], utc_text(T0 + m))],
        in_hw2,  # saved in another assignment only
    ]
    # before any save: the first save after the start
    assert by_start[utc_text(T0 - m)] == [hw1[(sha[a], utc_text(T0))]]


# ---- timeline ---------------------------------------------------------------------------------


def _busy_student(client: TestClient, headers: dict[str, str]) -> int:
    """A realistic mix, with many events sharing exact timestamps across tables."""
    rng = random.Random(7)
    events: list[dict[str, Any]] = []
    for i in range(40):
        ts = T0 + timedelta(seconds=10 * (i // 3))  # three saves per instant
        events.append(snap(f"f{i % 4}.c", ts, f"v{i}".encode()))
    for i in range(12):
        ts = T0 + timedelta(seconds=10 * rng.randint(0, 13))
        kind = "build" if i % 2 else "run"
        events.append(run(kind, ["gcc" if kind == "build" else "./a.out"], ts))
    for i in range(6):
        events.append(cell(T0 + timedelta(seconds=10 * rng.randint(0, 13)), i))
    events.append(rename("f0.c", "g0.c", T0 + timedelta(seconds=50)))
    events.append(delete("f1.c", T0 + timedelta(seconds=50)))
    events.append(snap("x.c", T0, b"other", sid="202000002"))  # another student
    ingest(client, headers, events)
    return len(events) - 1


def _walk(client: TestClient, h: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        q = dict(params, **({"cursor": cursor} if cursor else {}))
        page = client.get(f"{BASE}/timeline", params=q, headers=h).json()
        assert len(page["items"]) <= params["limit"]
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.mark.parametrize("limit", [1, 7, 20])
def test_timeline_pagination_loses_and_repeats_nothing(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str], limit: int
) -> None:
    total = _busy_student(client, agent_headers)
    h = reader_headers
    full = client.get(f"{BASE}/timeline", params={"limit": 1000}, headers=h).json()
    assert full["next_cursor"] is None
    everything = full["items"]
    assert len(everything) == total
    assert [i["ts"] for i in everything] == sorted(i["ts"] for i in everything)
    counts = {
        k: sum(1 for i in everything if i["kind"] == k) for k in {i["kind"] for i in everything}
    }
    assert counts == {"snapshot": 40, "build": 6, "run": 6, "cell": 6, "rename": 1, "delete": 1}

    paged = _walk(client, h, limit=limit)
    key = [(i["kind"], i["id"]) for i in paged]
    assert key == [(i["kind"], i["id"]) for i in everything]
    assert len(set(key)) == len(key)

    builds = _walk(client, h, limit=limit, kinds="build,rename")
    assert [(i["kind"], i["id"]) for i in builds] == [
        (i["kind"], i["id"]) for i in everything if i["kind"] in ("build", "rename")
    ]


def test_timeline_items_and_errors(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    _busy_student(client, agent_headers)
    h = reader_headers
    items = client.get(f"{BASE}/timeline", params={"limit": 1000}, headers=h).json()["items"]
    by_kind = {i["kind"]: i for i in items}
    assert by_kind["rename"]["path"] == "g0.c" and by_kind["rename"]["old_path"] == "f0.c"
    assert by_kind["delete"]["path"] == "f1.c"
    assert by_kind["cell"]["notebook"] == "lab.ipynb" and by_kind["cell"]["status"] == "ok"
    assert by_kind["build"]["argv"] == ["gcc"] and by_kind["build"]["run_id"] is not None
    assert by_kind["snapshot"]["snapshot_id"] == by_kind["snapshot"]["id"]
    assert items[0]["ts"] == utc_text(T0)
    # new events after the last page's cursor show up on the next page, never twice
    first = client.get(f"{BASE}/timeline", params={"limit": 5}, headers=h).json()
    ingest(client, agent_headers, [snap("late.c", T0 + timedelta(hours=1), b"late")])
    rest = _walk(client, h, limit=50, cursor=first["next_cursor"])
    assert [i["path"] for i in rest if i["kind"] == "snapshot"][-1] == "late.c"
    assert len(first["items"]) + len(rest) == len(items) + 1

    for params in ({"limit": 0}, {"limit": 1001}, {"kinds": "snapshot,bogus"}, {"cursor": "!!"}):
        assert client.get(f"{BASE}/timeline", params=params, headers=h).status_code == 422
    unknown = "/api/v1/classes/os-1/assignments/hw1/students/999/timeline"
    assert client.get(unknown, headers=h).status_code == 404
