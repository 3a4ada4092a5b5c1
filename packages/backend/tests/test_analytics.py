"""Analytics: pure metric functions, and the API on seeded data (SQLite and PostgreSQL)
whose expected values are worked out by hand below."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from watcher_backend import analytics_metrics as m
from watcher_backend.demo_data import EventFactory, diag

# ---- pure functions ------------------------------------------------------------------------


def test_error_template() -> None:
    t = m.error_template
    assert t("‘count’ undeclared (first use in this function)") == (
        "'…' undeclared (first use in this function)"
    )
    assert t("'total' undeclared (first use in this function)") == t(
        "‘count’ undeclared (first use in this function)"
    )
    # quoted punctuation is the error itself: kept
    assert t("expected ‘;’ before ‘return’") == "expected ';' before '…'"
    assert t("expected ';' before '}' token") == "expected ';' before '}' token"
    assert t("too many arguments to function ‘f’; expected 2, have 3") == (
        "too many arguments to function '…'; expected N, have N"
    )
    assert t("  first line\n  second  ") == "first line"
    assert t("") == ""


def test_time_on_task_caps_gaps() -> None:
    s = m.US
    assert m.time_on_task_us([]) == 0
    assert m.time_on_task_us([5 * s]) == 0
    # gaps 60, 30 and 3600 (capped to 600), unsorted input
    assert m.time_on_task_us([90 * s, 0, 60 * s, 3690 * s]) == (60 + 30 + 600) * s
    assert m.time_on_task_us([0, 3600 * s], idle_us=60 * s) == 60 * s


def _c(*outcomes: str) -> list[m.Compile]:
    """'.' a successful compile, a letter a failed one with that error, '?' unknown."""
    out = []
    for i, o in enumerate(outcomes):
        ok = None if o == "?" else o == "."
        out.append(m.Compile(i, ok, None if o in ".?" else o))
    return out


def test_error_quotient_by_hand() -> None:
    assert m.error_quotient(_c()) is None
    assert m.error_quotient(_c("A")) is None
    assert m.error_quotient(_c(".", ".")) == 0
    assert m.error_quotient(_c("A", "A")) == 1  # (8 + 3) / 11
    assert m.error_quotient(_c("A", "B")) == pytest.approx(8 / 11)
    # pairs (A,A)=11/11, (A,B)=8/11, (B,.)=0 → mean
    assert m.error_quotient(_c("A", "A", "B", ".")) == pytest.approx((1 + 8 / 11 + 0) / 3)
    # unknown outcomes are skipped, not counted as pairs
    assert m.error_quotient(_c("A", "?", "A")) == 1
    # the published replication's test vectors (errors at times 1,3,4)
    assert m.error_quotient(_c("A", "A", "B")) == pytest.approx((11 + 8) / 22)
    assert m.error_quotient(_c("A", "B", "C")) == pytest.approx(8 / 11)


def test_repeated_error_density_by_hand() -> None:
    assert m.repeated_error_density(_c()) == 0
    assert m.repeated_error_density(_c("A", "B", "C")) == 0
    assert m.repeated_error_density(_c("A", "A")) == pytest.approx(1 / 2)  # r=1
    assert m.repeated_error_density(_c("A", "A", "A")) == pytest.approx(4 / 3)  # r=2
    assert m.repeated_error_density(_c("A", "A", "B", "B")) == pytest.approx(1.0)
    # a success breaks the string: two strings of r=1
    assert m.repeated_error_density(_c("A", "A", ".", "A", "A")) == pytest.approx(1.0)
    assert m.longest_repeat(_c("A", "B", "B", "B", ".", "A")) == ("B", 3)
    assert m.longest_repeat(_c(".", ".")) == (None, 0)


def test_paste_like_and_first_save() -> None:
    s = m.US
    saves = [
        m.Save(1, 7, 0, 100),
        m.Save(2, 7, 10 * s, 450),  # +350 in 10 s: paste-like
        m.Save(3, 8, 11 * s, 5000),  # first save of another file: never
        m.Save(4, 7, 100 * s, 900),  # +450 in 90 s: typing is possible
        m.Save(5, 7, 101 * s, 200),  # shrink
    ]
    found = m.paste_like(saves)
    assert [(p.snapshot_id, p.added_bytes, p.seconds) for p in found] == [(2, 350, 10.0)]
    assert m.paste_like(saves, min_bytes=400, max_seconds=100)[0].snapshot_id == 4
    assert m.first_save_near_final(800, 1000)
    assert not m.first_save_near_final(799, 1000)
    assert not m.first_save_near_final(150, 150)  # below the 200-byte floor
    assert m.low_activity(10, 100.0) and not m.low_activity(25, 100.0)
    assert not m.low_activity(0, None) and not m.low_activity(0, 0.0)


# ---- seeded scenario -----------------------------------------------------------------------

A, B, C, D = "202011111", "202022222", "202033333", "202044444"
T0 = datetime(2024, 3, 4, 1, 0, tzinfo=UTC)  # Monday 10:00 KST
BASE = "/api/v1/classes/os-1/assignments/hw1"
UNDECLARED_X = "‘x’ undeclared (first use in this function)"
UNDECLARED_Y = "‘y’ undeclared (first use in this function)"
SEMI_RETURN = "expected ‘;’ before ‘return’"
SEMI_BRACE = "expected ';' before '}' token"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def scenario() -> list[dict[str, Any]]:
    f = EventFactory("os-1", prefix="an")
    return [
        # A: 4 saves (one paste-like), 3 failed builds then one ok, 3 runs, a cell an hour on
        f.save(A, "hw1", "main.c", at(0), b"a" * 100),
        f.build(
            A,
            "hw1",
            at(60),
            [diag(UNDECLARED_X, 5, 3), diag("each undeclared", 5, 3, severity="note")],
        ),
        f.build(A, "hw1", at(120), [diag(UNDECLARED_Y, 6, 3)]),
        f.save(A, "hw1", "main.c", at(180), b"a" * 150),
        f.build(A, "hw1", at(200), [diag(SEMI_RETURN, 7, 10)]),
        f.build(A, "hw1", at(260), [diag("unused variable ‘z’", 3, 9, severity="warning")]),
        f.run(A, "hw1", at(300)),
        f.run(A, "hw1", at(320), signal=11),  # SIGSEGV: a crash
        f.run(A, "hw1", at(330), signal=2),  # SIGINT: stopped, not a crash
        f.save(A, "hw1", "main.c", at(340), b"a" * 600),  # +450 in 160 s
        f.save(A, "hw1", "main.c", at(350), b"a" * 1000),  # +400 in 10 s: paste-like
        f.cell(A, "hw1", at(3950), 0),  # gap 3600 s → counts 600
        # B: first save already 95 % of the final; stuck on one error three times
        f.save(B, "hw1", "main.c", at(0), b"b" * 950),
        f.build(B, "hw1", at(100), [diag(SEMI_BRACE, 9, 1)]),
        f.build(B, "hw1", at(200), [diag(SEMI_BRACE, 9, 1)]),
        f.build(B, "hw1", at(300), [diag(SEMI_BRACE, 9, 1)]),
        f.save(B, "hw1", "main.c", at(1200), b"b" * 1000),  # gap 900 → 600
        # C: one save, nothing else
        f.save(C, "hw1", "main.c", at(30), b"int main(void) { return 0; }\n"),
        # D: only another assignment — Saturday 16:30 UTC is Sunday 01:30 in Seoul
        f.save(D, "hw2", "main.c", datetime(2024, 3, 9, 16, 30, tzinfo=UTC), b"d"),
    ]


@pytest.fixture
def seeded(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> TestClient:
    r = client.post("/api/v1/events", json={"events": scenario()}, headers=agent_headers)
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {"stored"}, r.json()
    client.headers.update(reader_headers)
    return client


def _get(c: TestClient, url: str, **params: Any) -> Any:
    r = c.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_summary_figures_by_hand(seeded: TestClient) -> None:
    s = _get(seeded, f"{BASE}/summary")
    assert s["stats"] == {"students": 4, "started": 3, "median_time_on_task_s": 900.0}
    rows = {r["student_id"]: r for r in s["items"]}
    assert list(rows) == [A, B, C, D]
    a = rows[A]
    assert (a["saves"], a["files"], a["builds"], a["builds_ok"], a["builds_failed"]) == (
        4, 1, 4, 1, 3,
    )  # fmt: skip
    assert a["build_success_rate"] == 0.25
    assert (a["runs"], a["crashes"], a["signalled"], a["cells"]) == (3, 1, 2, 1)
    # gaps 60+60+60+20+60+40+20+10+10+10 + min(3600, 600)
    assert a["time_on_task_s"] == 950.0
    # compiles: X-undeclared, Y-undeclared (same template), ';'-return, ok
    assert a["error_quotient"] == pytest.approx((11 / 11 + 8 / 11 + 0) / 3)
    assert a["repeated_error_density"] == pytest.approx(1 / 2)
    assert a["longest_repeat"] == 2
    assert a["paste_like"] == 1 and a["first_save_near_final"] == 0
    assert a["flags"] == ["paste_like"]
    assert a["first_activity"] == "2024-03-04T01:00:00Z"
    assert a["last_activity"] == "2024-03-04T02:05:50Z"

    b = rows[B]
    assert b["time_on_task_s"] == 100 + 100 + 100 + 600
    assert b["error_quotient"] == 1.0  # two pairs of the same error
    assert b["repeated_error_density"] == pytest.approx(4 / 3)  # r = 2
    assert b["build_success_rate"] == 0.0 and b["runs"] == 0
    assert b["flags"] == ["first_save_near_final", "stuck"]

    c = rows[C]
    assert c["started"] and c["time_on_task_s"] == 0
    assert c["error_quotient"] is None and c["build_success_rate"] is None
    assert c["flags"] == ["low_activity"]  # 0 < 25 % of the median 900

    d = rows[D]
    assert not d["started"] and d["saves"] == 0 and d["flags"] == []
    assert d["first_activity"] is None


def test_summary_sort_filter_paginate_and_params(seeded: TestClient) -> None:
    def ids(**params: Any) -> list[str]:
        return [r["student_id"] for r in _get(seeded, f"{BASE}/summary", **params)["items"]]

    assert ids(sort="time_on_task_s", order="desc") == [A, B, C, D]
    assert ids(sort="error_quotient", order="desc") == [B, A, C, D]  # nulls last
    assert ids(sort="error_quotient", order="asc") == [A, B, C, D]
    assert ids(sort="flags", order="desc") == [B, A, C, D]
    assert ids(flag="stuck") == [B]
    assert ids(started="false") == [D]
    assert ids(search="0333") == [C]
    page = _get(seeded, f"{BASE}/summary", limit=2, offset=1)
    assert (page["total"], [r["student_id"] for r in page["items"]]) == (4, [B, C])
    # a 1-minute idle threshold caps A's last gap at 60 s; B needs 4 in a row to be stuck
    tight = _get(seeded, f"{BASE}/summary", idle_minutes=1, stuck_streak=4)
    rows = {r["student_id"]: r for r in tight["items"]}
    assert rows[A]["time_on_task_s"] == 350 + 60
    assert "stuck" not in rows[B]["flags"]
    assert seeded.get(f"{BASE}/summary", params={"sort": "nope"}).status_code == 422
    assert seeded.get("/api/v1/classes/os-1/assignments/hw9/summary").status_code == 404


def test_student_analytics_evidence(seeded: TestClient) -> None:
    a = _get(seeded, f"{BASE}/students/{A}/analytics")
    assert a["figures"]["time_on_task_s"] == 950.0
    assert a["class_stats"]["median_time_on_task_s"] == 900.0
    [paste] = a["paste_like"]
    assert (paste["path"], paste["added_bytes"], paste["seconds"]) == ("main.c", 400, 10.0)
    assert paste["ts"] == "2024-03-04T01:05:50Z"
    assert a["files"] == [
        {"path": "main.c", "first_size": 100, "final_size": 1000, "first_save_near_final": False}
    ]
    assert a["repeated_errors"] == [
        {"template": "'…' undeclared (first use in this function)", "length": 2}
    ]
    assert a["top_errors"][0] == ["'…' undeclared (first use in this function)", 2]
    c = _get(seeded, f"{BASE}/students/{C}/analytics")
    assert c["figures"]["flags"] == ["low_activity"]  # the median is the class's, not C's
    assert seeded.get(f"{BASE}/students/999/analytics").status_code == 404


def test_error_summary(seeded: TestClient) -> None:
    e = _get(seeded, f"{BASE}/errors")
    assert (e["builds"], e["failed_builds"]) == (7, 6)
    top = [(t["template"], t["occurrences"], t["builds"], t["students"]) for t in e["top"]]
    assert top == [
        ("expected ';' before '}' token", 3, 3, 1),
        ("'…' undeclared (first use in this function)", 2, 2, 1),
        ("expected ';' before '…'", 1, 1, 1),
    ]
    assert e["top"][1]["example"] == UNDECLARED_X
    assert [(s["student_id"], s["streak"]) for s in e["stuck"]] == [(B, 3)]
    assert e["stuck"][0]["last_build"] == "2024-03-04T01:05:00Z"
    looser = _get(seeded, f"{BASE}/errors", stuck_streak=2, limit=1)
    assert [(s["student_id"], s["streak"]) for s in looser["stuck"]] == [(B, 3), (A, 2)]
    assert len(looser["top"]) == 1


def test_heatmap_in_seoul_time(seeded: TestClient) -> None:
    h = _get(seeded, "/api/v1/classes/os-1/heatmap", assignment="hw1")
    assert h["timezone"] == "Asia/Seoul" and h["weekdays"][0] == "Mon"
    # Monday 10h: A 4 saves + 4 builds + 3 runs, B 2 saves + 3 builds, C 1 save
    assert h["total"][0][10] == 17
    assert h["total"][0][11] == 1  # A's cell at 11:05
    assert sum(map(sum, h["total"])) == 18
    assert h["by_kind"]["build"][0][10] == 7 and h["by_kind"]["run"][0][10] == 3
    assert h["by_kind"]["save"][0][10] == 7 and h["by_kind"]["cell"][0][11] == 1
    everything = _get(seeded, "/api/v1/classes/os-1/heatmap")
    assert everything["total"][6][1] == 1  # D: Saturday 16:30 UTC = Sunday 01:30 KST
    assert sum(map(sum, everything["total"])) == 19
    assert seeded.get("/api/v1/classes/os-1/heatmap?assignment=hw9").status_code == 404


def test_students_csv(seeded: TestClient) -> None:
    r = seeded.get("/api/v1/export/students.csv", params={"class_div": "os-1"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.text.startswith("\ufeff")
    rows = list(csv.DictReader(io.StringIO(r.text.lstrip("\ufeff"))))
    assert [(x["assignment"], x["student_id"]) for x in rows] == [
        ("hw1", A), ("hw1", B), ("hw1", C), ("hw1", D),
        ("hw2", A), ("hw2", B), ("hw2", C), ("hw2", D),
    ]  # fmt: skip
    a = rows[0]
    assert a["build_success_rate"] == "0.250" and a["time_on_task_min"] == "15.8"
    assert a["error_quotient"] == f"{19 / 33:.3f}" and a["repeated_error_density"] == "0.500"
    assert a["first_activity_kst"] == "2024-03-04 10:00:00"
    assert a["last_activity_kst"] == "2024-03-04 11:05:50"
    assert a["crashes"] == "1" and a["flags"] == "paste_like"
    only = seeded.get("/api/v1/export/students.csv", params={"class_div": "os-1",
                      "assignment": "hw2"})  # fmt: skip
    assert len(only.text.strip().splitlines()) == 5


def test_reader_role_required(
    client: TestClient, agent_headers: dict[str, str], admin_headers: dict[str, str]
) -> None:
    for url in (
        f"{BASE}/summary",
        "/api/v1/classes/os-1/heatmap",
        "/api/v1/export/students.csv?class_div=os-1",
        "/api/v1/export/progsnap2?class_div=os-1",
    ):
        assert client.get(url).status_code == 401
        assert client.get(url, headers=agent_headers).status_code == 403
        assert client.get(url, headers=admin_headers).status_code == 404  # no such class yet
