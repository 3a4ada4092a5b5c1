"""The old JCode-Watcher API: every path, with realistic data, on SQLite and PostgreSQL.

Data goes in both through the compat POSTs (old agents) and through /api/v1/events (new
agents); the compat reads must answer the old shapes with correct numbers.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from starlette.testclient import TestClient

from watcher_common.timeutil import KST

S = "202012345"


def q(name: str) -> str:
    # What the old agents / a browser do with names holding '#', '?', spaces, Korean.
    return quote(name, safe="")


def kst(*args: int) -> datetime:
    return datetime(*args, tzinfo=KST)


_seq = 0


def _eid(prefix: str) -> str:
    global _seq
    _seq += 1
    return f"{prefix}-{_seq:08d}-{random.getrandbits(32):08x}"


def snap(
    class_div: str,
    sid: str,
    hw: str,
    path: str,
    ts: datetime,
    content: bytes | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "file.snapshot",
        "event_id": _eid("snap"),
        "agent": "filemon",
        "agent_version": "test",
        "ts": ts.astimezone(UTC).isoformat(),
        "class_div": class_div,
        "student_id": sid,
        "assignment": hw,
        "path": path,
    }
    if content is None:
        content = b"x" * (size or 0)
    ev["size"] = len(content)
    ev["sha256"] = hashlib.sha256(content).hexdigest()
    ev["content_b64"] = base64.b64encode(content).decode()
    return ev


def run(
    class_div: str,
    sid: str,
    hw: str,
    kind: str,
    argv: list[str],
    start: datetime,
    *,
    exit_code: int = 0,
    sources: list[dict[str, Any]] | None = None,
    tool: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "kind": "process.run",
        "event_id": _eid("run"),
        "agent": "procmon",
        "agent_version": "test",
        "ts": start.astimezone(UTC).isoformat(),
        "class_div": class_div,
        "student_id": sid,
        "assignment": hw,
        "run_kind": kind,
        "tool": tool or argv[0].rsplit("/", 1)[-1],
        "exe": "/usr/bin/" + argv[0],
        "filename": "/usr/bin/" + argv[0],
        "argv": argv,
        "cwd": f"/home/coder/project/{hw}",
        "start": start.astimezone(UTC).isoformat(),
        "end": (start + timedelta(seconds=1)).astimezone(UTC).isoformat(),
        "exit_code": exit_code,
        "source_files": sources or [],
        **extra,
    }


def ingest(client: TestClient, headers: dict[str, str], events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 500):
        r = client.post("/api/v1/events", json={"events": events[i : i + 500]}, headers=headers)
        assert r.status_code == 200, r.text
        statuses = {x["status"] for x in r.json()["results"]}
        assert statuses <= {"stored", "duplicate"}, r.json()


def post_snapshot(
    client: TestClient,
    headers: dict[str, str],
    class_div: str,
    hw: str,
    sid: str,
    name: str,
    stamp: str,
    size: int,
) -> Any:
    return client.post(
        f"/api/{q(class_div)}/{hw}/{sid}/{q(name)}/{stamp}", json={"bytes": size}, headers=headers
    )


def build_body(ts: str, **kw: Any) -> dict[str, Any]:
    body = {
        "binary_path": "/usr/bin/gcc",
        "cmdline": "gcc -o main main.c",
        "exit_code": 0,
        "cwd": "/home/coder/project/hw1",
        "target_path": "/home/coder/project/hw1/main.c",
        "timestamp": ts,
    }
    body.update(kw)
    return body


# ---- writes ------------------------------------------------------------------------------


def test_compat_writes_then_reads(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    base = f"/api/os-1/hw1/{S}"
    for stamp, size in (("20240301_100000.c", 10), ("20240301_100500.c", 25)):
        r = post_snapshot(client, agent_headers, "os-1", "hw1", S, "main.c", stamp, size)
        assert r.status_code == 200, r.text
        assert r.json() == {"message": "Snapshot registered successfully"}
    r = post_snapshot(client, agent_headers, "os-1", "hw1", S, "src@util.c", "20240301_100200", 7)
    assert r.status_code == 200, r.text

    r = client.post(
        f"{base}/logs/build",
        json=build_body("2024-03-01T10:06:00", cmdline='gcc  -o main "my main.c"'),
        headers=agent_headers,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Build log registered successfully"}
    r = client.post(
        f"{base}/logs/build",
        json=build_body("2024-03-01T01:07:00+00:00", exit_code=1),  # aware: 10:07 KST
        headers=agent_headers,
    )
    assert r.status_code == 200, r.text
    run_body = {
        "cmdline": "./main arg1",
        "exit_code": 139,
        "cwd": "/home/coder/project/hw1",
        "target_path": "/home/coder/project/hw1/main",
        "process_type": "binary",
        "timestamp": "2024-03-01T10:08:00",
    }
    r = client.post(f"{base}/logs/run", json=run_body, headers=agent_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"message": "Run log registered successfully"}

    assert client.get(base, headers=reader_headers).json() == ["main.c", "src@util.c"]
    assert client.get(f"{base}/main.c", headers=reader_headers).json() == [
        "20240301_100000",
        "20240301_100500",
    ]
    assert client.get(f"{base}/src@util.c", headers=reader_headers).json() == ["20240301_100200"]

    builds = client.get(f"{base}/logs/build", headers=reader_headers).json()
    assert [b["timestamp"] for b in builds] == ["2024-03-01T10:07:00", "2024-03-01T10:06:00"]
    assert builds[0]["exit_code"] == 1
    # verbatim, even with doubled spaces and quotes
    assert builds[1]["cmdline"] == 'gcc  -o main "my main.c"'
    assert builds[1] == {
        "binary_path": "/usr/bin/gcc",
        "cmdline": 'gcc  -o main "my main.c"',
        "exit_code": 0,
        "cwd": "/home/coder/project/hw1",
        "target_path": "/home/coder/project/hw1/main.c",
        "timestamp": "2024-03-01T10:06:00",
        "file_size": 25,  # target_path names main.c, whose latest version is 25 bytes
    }
    runs = client.get(f"{base}/logs/run", headers=reader_headers).json()
    assert runs == [
        {
            "cmdline": "./main arg1",
            "exit_code": 139,
            "cwd": "/home/coder/project/hw1",
            "target_path": "/home/coder/project/hw1/main",
            "process_type": "binary",
            "timestamp": "2024-03-01T10:08:00",
            "file_size": 0,  # the binary is not a source file we know
        }
    ]

    # the same data through the v1 API: compat "src@util.c" was stored as src/util.c
    files = client.get(
        f"/api/v1/classes/os-1/assignments/hw1/students/{S}/files", headers=reader_headers
    ).json()
    assert sorted(f["path"] for f in files) == ["main.c", "src/util.c"]
    assert all(f["versions"] >= 1 for f in files)


def test_duplicate_compat_posts_are_stored_once(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    base = f"/api/os-1/hw2/{S}"
    for _ in range(3):
        r = post_snapshot(client, agent_headers, "os-1", "hw2", S, "a.c", "20240301_100000.c", 42)
        assert r.status_code == 200
        assert r.json() == {"message": "Snapshot registered successfully"}
        r = client.post(
            f"{base}/logs/build", json=build_body("2024-03-01T10:00:00"), headers=agent_headers
        )
        assert r.status_code == 200
        assert r.json() == {"message": "Build log registered successfully"}
    assert client.get(f"{base}/a.c", headers=reader_headers).json() == ["20240301_100000"]
    avg = client.get(f"/api/snapshot_avg/os-1/hw2/{S}/a.c", headers=reader_headers).json()
    assert avg == {"snapshot_avg": 1, "snapshot_size_avg": 42.0}
    assert len(client.get(f"{base}/logs/build", headers=reader_headers).json()) == 1
    # a different size at the same time is a different event
    r = post_snapshot(client, agent_headers, "os-1", "hw2", S, "a.c", "20240301_100000.c", 43)
    assert r.status_code == 200
    avg = client.get(f"/api/snapshot_avg/os-1/hw2/{S}/a.c", headers=reader_headers).json()
    assert avg == {"snapshot_avg": 2, "snapshot_size_avg": 42.5}


@pytest.mark.parametrize(
    "path, body",
    [
        (f"/api/os-1/hw1/{S}/logs/build", build_body("yesterday")),
        (f"/api/os-1/hw1/{S}/logs/build", build_body("2024-13-01T00:00:00")),
        (f"/api/os-1/hw1/{S}/logs/build", build_body("")),
        (
            f"/api/os-1/hw1/{S}/logs/build",
            {k: v for k, v in build_body("x").items() if k != "timestamp"},
        ),
        (f"/api/os-1/hw1/{S}/logs/run", {"cmdline": "./a", "timestamp": "2024/03/01 10:00"}),
        (f"/api/os-1/hw1/{S}/logs/build", build_body("2024-03-01T10:00:00", exit_code="zero")),
        (f"/api/os-1/hw1/{S}/main.c/20240301_100000", {"bytes": -1}),
        (f"/api/os-1/hw1/{S}/main.c/20240301_100000", {"bytes": "many"}),
        (f"/api/os-1/hw1/{S}/main.c/20240301_100000", {}),
        (f"/api/os-1/hw1/{S}/main.c/2024-03-01", {"bytes": 1}),
        (f"/api/os-1/hw1/{S}/main.c/20241301_100000.c", {"bytes": 1}),
        (f"/api/os-1/hw1/{S}/main.c/20240301_100000c", {"bytes": 1}),
        (f"/api/os/hw1/{S}/main.c/20240301_100000", {"bytes": 1}),  # no division
        ("/api/os-1/hw1/abc/main.c/20240301_100000", {"bytes": 1}),  # not a student id
        ("/api/os-x/hw1/202012345/logs/build", build_body("2024-03-01T10:00:00")),
        (f"/api/os-1/lab1/{S}/main.c/20240301_100000", {"bytes": 1}),  # not an assignment
    ],
)
def test_bad_writes_are_422(
    client: TestClient,
    agent_headers: dict[str, str],
    reader_headers: dict[str, str],
    path: str,
    body: dict[str, Any],
) -> None:
    r = client.post(path, json=body, headers=agent_headers)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]
    # nothing was stored
    assert client.get(f"/api/os-1/hw1/{S}", headers=reader_headers).json() == []
    assert client.get(f"/api/os-1/hw1/{S}/logs/build", headers=reader_headers).json() == []


def test_compat_auth(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    path = f"/api/os-1/hw1/{S}/main.c/20240301_100000"
    assert client.post(path, json={"bytes": 1}).status_code == 401
    assert client.post(path, json={"bytes": 1}, headers=reader_headers).status_code == 403
    assert client.get(f"/api/os-1/hw1/{S}").status_code == 401
    assert client.get(f"/api/os-1/hw1/{S}", headers=agent_headers).status_code == 403
    assert client.get("/api/assignment/os-1/hw1", headers=agent_headers).status_code == 403


# ---- identity: odd names survive both ways in ---------------------------------------------

NAMES = [
    ("cpp-1", "hw1", "test@file#1.cpp"),
    ("한글-1", "hw1", "테스트.py"),
    ("os-1", "hw1", "my file?.c"),
    ("data-structure-1", "hw3", "a.c"),
    ("os-2", "hw21", "main.c"),
]


@pytest.mark.parametrize("class_div, hw, name", NAMES)
def test_names_via_compat_post(
    client: TestClient,
    agent_headers: dict[str, str],
    reader_headers: dict[str, str],
    class_div: str,
    hw: str,
    name: str,
) -> None:
    r = post_snapshot(client, agent_headers, class_div, hw, S, name, "20240301_100000", 5)
    assert r.status_code == 200, r.text
    base = f"/api/{q(class_div)}/{hw}/{S}"
    assert client.get(base, headers=reader_headers).json() == [name]
    assert client.get(f"{base}/{q(name)}", headers=reader_headers).json() == ["20240301_100000"]
    avg = client.get(
        f"/api/snapshot_avg/{q(class_div)}/{hw}/{S}/{q(name)}", headers=reader_headers
    ).json()
    assert avg == {"snapshot_avg": 1, "snapshot_size_avg": 5.0}
    classes = {c["class_div"] for c in client.get("/api/v1/classes", headers=reader_headers).json()}
    assert class_div in classes


@pytest.mark.parametrize("class_div, hw, name", NAMES)
def test_names_via_v1_events(
    client: TestClient,
    agent_headers: dict[str, str],
    reader_headers: dict[str, str],
    class_div: str,
    hw: str,
    name: str,
) -> None:
    ingest(client, agent_headers, [snap(class_div, S, hw, name, kst(2024, 3, 1, 10), b"hello")])
    base = f"/api/{q(class_div)}/{hw}/{S}"
    assert client.get(base, headers=reader_headers).json() == [name]
    assert client.get(f"{base}/{q(name)}", headers=reader_headers).json() == ["20240301_100000"]
    # a later old-agent POST for the same name is the same file (the literal name wins)
    r = post_snapshot(client, agent_headers, class_div, hw, S, name, "20240301_100100", 6)
    assert r.status_code == 200, r.text
    files = client.get(
        f"/api/v1/classes/{q(class_div)}/assignments/{hw}/students/{S}/files",
        headers=reader_headers,
    ).json()
    assert [(f["path"], f["versions"]) for f in files] == [(name, 2)]


def test_at_sign_means_slash_for_new_files(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    ingest(client, agent_headers, [snap("os-1", S, "hw1", "src/main.c", kst(2024, 3, 1, 9), b"x")])
    base = f"/api/os-1/hw1/{S}"
    assert client.get(base, headers=reader_headers).json() == ["src@main.c"]
    for name in ("src@main.c", "lib@x.c", "@lead.c"):
        r = post_snapshot(client, agent_headers, "os-1", "hw1", S, name, "20240301_100000", 3)
        assert r.status_code == 200, r.text
    paths = {
        f["path"]
        for f in client.get(
            f"/api/v1/classes/os-1/assignments/hw1/students/{S}/files", headers=reader_headers
        ).json()
    }
    # existing file reused; new "@" name read as a path; "/lead.c" would be invalid: literal
    assert paths == {"src/main.c", "lib/x.c", "@lead.c"}
    assert client.get(base, headers=reader_headers).json() == ["@lead.c", "lib@x.c", "src@main.c"]
    assert client.get(f"{base}/src@main.c", headers=reader_headers).json() == [
        "20240301_090000",
        "20240301_100000",
    ]


# ---- logs -----------------------------------------------------------------------------------


def test_build_log_is_visible_immediately(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    url = f"/api/os-1/hw1/{S}/logs/build"
    for i in range(3):
        assert len(client.get(url, headers=reader_headers).json()) == i
        r = client.post(url, json=build_body(f"2024-03-01T10:0{i}:00"), headers=agent_headers)
        assert r.status_code == 200
        logs = client.get(url, headers=reader_headers).json()
        assert len(logs) == i + 1
        assert logs[0]["timestamp"] == f"2024-03-01T10:0{i}:00"


def test_file_size_is_the_code_compiled(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    main, util = b"int main(){return 0;}\n" * 5, b"int util;\n"
    sources = [
        {"path": "main.c", "sha256": hashlib.sha256(main).hexdigest(), "size": len(main)},
        {"path": "util.c", "sha256": hashlib.sha256(util).hexdigest(), "size": len(util)},
    ]
    t = kst(2024, 3, 1, 10)
    ingest(
        client,
        agent_headers,
        [
            snap("os-1", S, "hw1", "main.c", t, main),
            snap("os-1", S, "hw1", "util.c", t, util),
            run(
                "os-1",
                S,
                "hw1",
                "build",
                ["gcc", "main.c", "util.c"],
                t + timedelta(minutes=1),
                sources=sources,
                output_path="a.out",
            ),
            run(
                "os-1",
                S,
                "hw1",
                "run",
                ["./a.out", "x y"],
                t + timedelta(minutes=2),
                tool="a.out",
                sources=[{"path": "a.out", "size": 16000}],
                exit_code=3,
            ),
            run(
                "os-1",
                S,
                "hw1",
                "interpreter",
                ["python3", "t.py"],
                t + timedelta(minutes=3),
                sources=[{"path": "t.py", "size": 12}],
            ),
        ],
    )
    builds = client.get(f"/api/os-1/hw1/{S}/logs/build", headers=reader_headers).json()
    assert builds == [
        {
            "binary_path": "/usr/bin/gcc",
            "cmdline": "gcc main.c util.c",
            "exit_code": 0,
            "cwd": "/home/coder/project/hw1",
            "target_path": "a.out",
            "timestamp": "2024-03-01T10:01:00",
            "file_size": len(main) + len(util),
        }
    ]
    runs = client.get(f"/api/os-1/hw1/{S}/logs/run", headers=reader_headers).json()
    assert [(r["process_type"], r["file_size"], r["exit_code"]) for r in runs] == [
        ("python", 12, 0),
        ("binary", 16000, 3),
    ]
    assert runs[1]["cmdline"] == "./a.out x y"
    assert runs[0]["timestamp"] == "2024-03-01T10:03:00"


# ---- per-student summaries -------------------------------------------------------------------


def _graph_data(client: TestClient, agent_headers: dict[str, str]) -> None:
    ev = [
        snap("os-1", S, "hw1", "a.c", kst(2024, 3, 1, 10, 0, 30), size=100),
        snap("os-1", S, "hw1", "a.c", kst(2024, 3, 1, 10, 3, 10), size=150),
        snap("os-1", S, "hw1", "b.c", kst(2024, 3, 1, 10, 4, 59), size=50),
        snap("os-1", S, "hw1", "a.c", kst(2024, 3, 1, 10, 12, 0), size=120),
        snap("os-1", S, "hw1", "b.c", kst(2024, 3, 1, 10, 30, 0), size=0),
        snap("os-1", "202099999", "hw1", "a.c", kst(2024, 3, 1, 10, 1), size=999),  # other
    ]
    ingest(client, agent_headers, ev)


def test_graph_data_hand_computed(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    _graph_data(client, agent_headers)
    url = f"/api/graph_data/os-1/hw1/{S}"
    # buckets from 10:00 (first snapshot's minute); 10:05-10:10 and others empty: left out
    assert client.get(f"{url}/5", headers=reader_headers).json() == {
        "trends": [
            {"timestamp": "20240301_1000", "total_size": 200, "size_change": 200},
            {"timestamp": "20240301_1010", "total_size": 170, "size_change": -30},
            {"timestamp": "20240301_1030", "total_size": 120, "size_change": -50},
        ]
    }
    assert client.get(f"{url}/1", headers=reader_headers).json()["trends"] == [
        {"timestamp": "20240301_1000", "total_size": 100, "size_change": 100},
        {"timestamp": "20240301_1003", "total_size": 150, "size_change": 50},
        {"timestamp": "20240301_1004", "total_size": 200, "size_change": 50},
        {"timestamp": "20240301_1012", "total_size": 170, "size_change": -30},
        {"timestamp": "20240301_1030", "total_size": 120, "size_change": -50},
    ]
    assert client.get(f"{url}/60", headers=reader_headers).json()["trends"] == [
        {"timestamp": "20240301_1000", "total_size": 120, "size_change": 120}
    ]
    for bad in ("0", "-5"):
        r = client.get(f"{url}/{bad}", headers=reader_headers)
        assert r.status_code == 400
        assert "positive" in r.json()["detail"]
    assert client.get(f"{url}/five", headers=reader_headers).status_code == 422
    assert client.get("/api/graph_data/os-1/hw1/1/5", headers=reader_headers).json() == {
        "trends": []
    }


def test_snapshot_averages(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    _graph_data(client, agent_headers)
    r = client.get(f"/api/snapshot_avg/os-1/hw1/{S}/a.c", headers=reader_headers).json()
    assert r == {"snapshot_avg": 3, "snapshot_size_avg": round((100 + 150 + 120) / 3, 2)}
    r = client.get(f"/api/assignments/snapshot_avg/os-1/hw1/{S}", headers=reader_headers).json()
    assert r == {
        "snapshot_avg": 5,
        "snapshot_size_avg": 84.0,
        "first": "2024-03-01T10:00:30",
        "last": "2024-03-01T10:30:00",
        "total": 1770.0,
        "interval": 18 * 60,
    }
    one = client.get(
        "/api/assignments/snapshot_avg/os-1/hw1/202099999", headers=reader_headers
    ).json()
    assert (one["snapshot_avg"], one["total"], one["interval"]) == (1, 0.0, 0)


def test_unknown_identities_give_empty_answers(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    _graph_data(client, agent_headers)
    h = reader_headers
    for prefix in (f"os-9/hw1/{S}", f"os-1/hw9/{S}", "os-1/hw1/1"):
        assert client.get(f"/api/{prefix}", headers=h).json() == []
        assert client.get(f"/api/{prefix}/a.c", headers=h).json() == []
        assert client.get(f"/api/{prefix}/logs/build", headers=h).json() == []
        assert client.get(f"/api/{prefix}/logs/run", headers=h).json() == []
        assert client.get(f"/api/snapshot_avg/{prefix}/a.c", headers=h).json() == {
            "snapshot_avg": None,
            "snapshot_size_avg": None,
        }
        assert client.get(f"/api/assignments/snapshot_avg/{prefix}", headers=h).json() == {
            "snapshot_avg": None,
            "snapshot_size_avg": None,
            "first": None,
            "last": None,
            "total": None,
            "interval": None,
        }
        assert client.get(f"/api/graph_data/{prefix}/5", headers=h).json() == {"trends": []}
    assert client.get(f"/api/os-1/hw1/{S}/nope.c", headers=h).json() == []
    for cls_hw in ("os-9/hw1", "os-1/hw9"):
        assert client.get(f"/api/assignment/{cls_hw}", headers=h).json() == {
            "percentile_90": None,
            "percentile_50": None,
            "avg_bytes": None,
            "avg_num": None,
            "top_7": [],
        }
        assert client.get(f"/api/build_avg/{cls_hw}", headers=h).json() == {"avg_count": 0.0}
        assert client.get(f"/api/run_avg/{cls_hw}", headers=h).json() == {"avg_count": 0.0}
        r = client.get(
            f"/api/total_graph_data/{cls_hw}/2024-03-01T00:00:00/2024-03-02T00:00:00", headers=h
        )
        assert r.json() == {"results": []}


# ---- class-wide aggregates ------------------------------------------------------------------


def _random_class(seed: int) -> tuple[list[dict[str, Any]], list[tuple[str, str, datetime, int]]]:
    """9 students, a few files each, random sizes and times; returns events and the raw rows
    (student, path, time, size) for the Python-side reference computation."""
    rng = random.Random(seed)
    events, rows = [], []
    t0 = kst(2024, 3, 1, 9)
    for n in range(9):
        sid = f"2020{n:05d}"
        for f in range(rng.randint(1, 3)):
            path = f"src/f{f}.c"
            for _ in range(rng.randint(1, 6)):
                ts = t0 + timedelta(seconds=rng.randint(0, 86_400))
                size = rng.randint(0, 5000)
                events.append(snap("os-1", sid, "hw1", path, ts, size=size))
                rows.append((sid, path, ts, size))
    return events, rows


def _expected_summary(rows: list[tuple[str, str, datetime, int]]) -> dict[str, Any]:
    sizes = sorted(r[3] for r in rows)

    def rank(p: int) -> int:
        return sizes[max(1, math.ceil(p * len(sizes) / 100)) - 1]

    by_student: dict[str, list[int]] = defaultdict(list)
    for sid, _, _, size in rows:
        by_student[sid].append(size)
    latest_ts: dict[str, datetime] = {}
    latest_file: dict[tuple[str, str], tuple[datetime, int]] = {}
    for sid, path, ts, size in sorted(rows, key=lambda r: r[2]):
        latest_ts[sid] = ts
        latest_file[(sid, path)] = (ts, size)
    top = sorted(latest_ts, key=lambda s: (-latest_ts[s].timestamp(), s))[:7]
    return {
        "percentile_90": rank(90),
        "percentile_50": rank(50),
        "avg_bytes": round(sum(sum(v) / len(v) for v in by_student.values()) / len(by_student), 2),
        "avg_num": round(len(rows) / len(by_student), 2),
        "top_7": [
            {
                "student_num": s,
                "timestamp": latest_ts[s].astimezone(KST).strftime("%Y%m%d_%H%M%S"),
                "code_size": sum(v[1] for k, v in latest_file.items() if k[0] == s),
            }
            for s in top
        ],
    }


@pytest.mark.parametrize("seed", [1, 2])
def test_assignment_summary_matches_python(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str], seed: int
) -> None:
    events, rows = _random_class(seed)
    ingest(client, agent_headers, events)
    got = client.get("/api/assignment/os-1/hw1", headers=reader_headers).json()
    want = _expected_summary(rows)
    assert got["avg_bytes"] == pytest.approx(want["avg_bytes"], abs=0.011)
    assert got["avg_num"] == pytest.approx(want["avg_num"], abs=0.011)
    got.pop("avg_bytes"), want.pop("avg_bytes"), got.pop("avg_num"), want.pop("avg_num")
    assert got == want


def test_assignment_summary_small_by_hand(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    t = kst(2024, 3, 1, 10)
    ingest(
        client,
        agent_headers,
        [
            snap("os-1", "2001", "hw1", "a.c", t, size=1),
            snap("os-1", "2001", "hw1", "a.c", t + timedelta(minutes=1), size=2),
            snap("os-1", "2001", "hw1", "b.c", t + timedelta(minutes=2), size=3),
            snap("os-1", "0042", "hw1", "a.c", t + timedelta(minutes=3), size=4),
        ],
    )
    got = client.get("/api/assignment/os-1/hw1", headers=reader_headers).json()
    assert got == {
        "percentile_90": 4,  # rank ceil(3.6) = 4
        "percentile_50": 2,  # rank ceil(2.0) = 2
        "avg_bytes": 3.0,  # mean(2.0, 4.0)
        "avg_num": 2.0,
        "top_7": [
            {"student_num": "0042", "timestamp": "20240301_100300", "code_size": 4},
            {"student_num": "2001", "timestamp": "20240301_100200", "code_size": 5},
        ],
    }


def test_total_graph_data(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    _graph_data(client, agent_headers)
    url = "/api/total_graph_data/os-1/hw1"
    # a.c: 100 → 150 → 120 (|50| + |30|); b.c: 50 → 0 (|50|); other student: one snapshot
    whole = client.get(f"{url}/2024-03-01T00:00:00/2024-03-02T00:00:00", headers=reader_headers)
    assert whole.json() == {
        "results": [
            {"student_num": S, "size_change": 130},
            {"student_num": "202099999", "size_change": 0},
        ]
    }
    # inclusive window 10:03:10..10:12:00 KST: a.c 150 → 120 only
    part = client.get(f"{url}/2024-03-01T10:03:10/2024-03-01T10:12:00", headers=reader_headers)
    assert part.json() == {"results": [{"student_num": S, "size_change": 30}]}
    # aware datetimes work too (01:03:10Z = 10:03:10 KST)
    aware = client.get(
        f"{url}/{q('2024-03-01T01:03:10+00:00')}/2024-03-01T01:12:00Z", headers=reader_headers
    )
    assert aware.json() == part.json()
    for bad in ("yesterday/2024-03-02T00:00:00", "2024-03-01T00:00:00/2024-02-30T00:00:00"):
        r = client.get(f"{url}/{bad}", headers=reader_headers)
        assert r.status_code == 422, r.text


def test_build_and_run_averages(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    t = kst(2024, 3, 1, 10)
    ingest(
        client,
        agent_headers,
        [
            run("os-1", "1", "hw1", "build", ["gcc", "a.c"], t),
            run("os-1", "1", "hw1", "build", ["gcc", "a.c"], t + timedelta(seconds=1)),
            run("os-1", "1", "hw1", "run", ["./a.out"], t + timedelta(seconds=2), tool="a.out"),
            run("os-1", "2", "hw1", "build", ["gcc", "b.c"], t),
            run("os-1", "2", "hw1", "interpreter", ["python3", "b.py"], t),
            run("os-1", "2", "hw1", "buildtool", ["make"], t),  # neither a build nor a run
            snap("os-1", "3", "hw1", "c.c", t, size=3),  # active, never built
            run("os-1", "4", "hw2", "build", ["gcc", "x.c"], t),  # other assignment
        ],
    )
    h = reader_headers
    assert client.get("/api/build_avg/os-1/hw1", headers=h).json() == {"avg_count": 1.0}
    assert client.get("/api/run_avg/os-1/hw1", headers=h).json() == {"avg_count": 0.67}
    assert client.get("/api/build_avg/os-1/hw2", headers=h).json() == {"avg_count": 1.0}
    assert client.get("/api/run_avg/os-1/hw2", headers=h).json() == {"avg_count": 0.0}


def test_percentiles_nearest_rank_for_every_count(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    """N = 1..13 snapshots (duplicates included): both walk directions of the index."""
    rng = random.Random(5)
    t = kst(2024, 3, 1, 10)
    events, sizes = [], {}
    for n in range(1, 14):
        sizes[n] = [rng.choice([0, 5, 5, 17, 300, 4096, 9999]) for _ in range(n)]
        for i, size in enumerate(sizes[n]):
            events.append(snap("os-1", S, f"hw{n}", "a.c", t + timedelta(seconds=i), size=size))
    ingest(client, agent_headers, events)
    for n, values in sizes.items():
        ordered = sorted(values)
        got = client.get(f"/api/assignment/os-1/hw{n}", headers=reader_headers).json()
        assert got["percentile_50"] == ordered[math.ceil(0.5 * n) - 1], (n, ordered)
        assert got["percentile_90"] == ordered[math.ceil(0.9 * n) - 1], (n, ordered)


def test_student_stats_follow_snapshot_inserts_deletes_updates(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> None:
    """The per-student totals and the per-size counts (written by the ingest writer, kept
    by triggers on deletes and updates) always equal a GROUP BY over the snapshots."""
    from sqlalchemy import text

    events, _ = _random_class(3)
    ingest(client, agent_headers, events)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    pairs = [
        (
            "SELECT assignment_id, student_pk, count(*), sum(size), max(ts_us) FROM snapshots"
            " GROUP BY assignment_id, student_pk ORDER BY 1, 2",
            "SELECT assignment_id, student_pk, snapshots, size_sum, last_ts_us"
            " FROM assignment_student_stats ORDER BY 1, 2",
        ),
        (
            "SELECT assignment_id, size, count(*) FROM snapshots"
            " GROUP BY assignment_id, size ORDER BY 1, 2",
            "SELECT assignment_id, size, snapshots FROM snapshot_size_counts ORDER BY 1, 2",
        ),
    ]

    def check() -> None:
        with engine.connect() as conn:
            for truth, kept in pairs:
                want = [tuple(r) for r in conn.execute(text(truth))]
                got = [tuple(r) for r in conn.execute(text(kept))]
                assert got == want
                assert want

    check()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM file_events"))
        # the latest snapshot of some student, a middle one, and every one of another
        conn.execute(
            text(
                "DELETE FROM snapshots WHERE id ="
                " (SELECT id FROM snapshots ORDER BY ts_us DESC LIMIT 1)"
            )
        )
        conn.execute(text("DELETE FROM snapshots WHERE id % 7 = 3"))
        conn.execute(
            text("DELETE FROM snapshots WHERE student_pk = (SELECT min(student_pk) FROM snapshots)")
        )
        conn.execute(
            text("UPDATE snapshots SET size = size + 1, ts_us = ts_us + 5 WHERE id % 5 = 1")
        )
    check()
    # and the percentiles answer from the counts as from the rows left
    with engine.connect() as conn:
        left = sorted(r[0] for r in conn.execute(text("SELECT size FROM snapshots")))
    got = client.get("/api/assignment/os-1/hw1", headers=reader_headers).json()
    assert (got["percentile_90"], got["percentile_50"]) == (
        left[math.ceil(0.9 * len(left)) - 1],
        left[math.ceil(0.5 * len(left)) - 1],
    )
