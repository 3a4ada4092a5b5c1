"""ProgSnap2 export: a dataset checker (columns per event type, event order, code states,
pseudonymity) run on exported seeded data, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from watcher_backend.demo_data import EventFactory, diag

# ---- the checker (ProgSnap2 v6 main table; written from the spec, not from the exporter) ----

REQUIRED_ALL = ("EventID", "SubjectID", "ToolInstances", "CodeStateID", "EventType", "Order")
REQUIRED = {
    "File.Edit": ("CodeStateSection",),
    "File.Delete": ("CodeStateSection",),
    "File.Rename": ("CodeStateSection",),
    "Compile": ("CompileResult",),
    "Compile.Error": ("ParentEventID", "CompileMessageType", "CompileMessageData"),
    "Compile.Warning": ("ParentEventID", "CompileMessageType", "CompileMessageData"),
    "Run.Program": (),
}
# Optional columns of the spec that concern one kind of event only.
SPECIFIC = {
    "CodeStateSection": {"File.Edit", "File.Delete", "File.Rename", "Compile.Error",
                         "Compile.Warning", "Run.Program"},
    "EditType": {"File.Edit"},
    "CompileResult": {"Compile"},
    "ParentEventID": {"Compile.Error", "Compile.Warning"},
    "CompileMessageType": {"Compile.Error", "Compile.Warning"},
    "CompileMessageData": {"Compile.Error", "Compile.Warning"},
    "SourceLocation": {"Compile.Error", "Compile.Warning"},
    "ProgramResult": {"Run.Program"},
}  # fmt: skip
VALUES = {
    "CompileResult": {"Success", "Error"},
    "ProgramResult": {"Success", "Error"},
    "EditType": {"GenericEdit", "Insert", "Delete", "Replace", "Move", "Paste", "Undo", "Redo"},
}


def check_progsnap2(data: bytes) -> tuple[dict[str, str], list[dict[str, str]], zipfile.ZipFile]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = set(zf.namelist())
    assert {"DatasetMetadata.csv", "MainTable.csv"} <= names
    meta_rows = list(csv.reader(io.StringIO(zf.read("DatasetMetadata.csv").decode())))
    assert meta_rows[0] == ["Property", "Value"]
    meta = dict((r[0], r[1]) for r in meta_rows[1:])
    assert meta["CodeStateRepresentation"] == "Directory"
    assert meta["EventOrderScope"] in ("Global", "Restricted", "None")
    assert meta["IsEventOrderingConsistent"] in ("true", "false")
    scope_cols = [c for c in meta["EventOrderScopeColumns"].split(";") if c]
    assert bool(scope_cols) == (meta["EventOrderScope"] == "Restricted")

    rows = list(csv.DictReader(io.StringIO(zf.read("MainTable.csv").decode("utf-8"))))
    columns = set(rows[0]) if rows else set()
    assert all(c in columns for c in REQUIRED_ALL)
    for c in columns:  # custom columns must be marked as such
        assert c in REQUIRED_ALL or c in SPECIFIC or c.startswith("X-") or c in {
            "ServerTimestamp", "ServerTimezone", "CourseID", "AssignmentID",
            "InterventionCategory",
        }, c  # fmt: skip
    ids = [r["EventID"] for r in rows]
    assert len(set(ids)) == len(ids), "EventID must be unique"
    by_id = {r["EventID"]: r for r in rows}
    for r in rows:
        et = r["EventType"]
        assert et in REQUIRED, f"unexpected event type {et}"
        for c in (*REQUIRED_ALL, *REQUIRED[et]):
            assert r[c] != "", f"{et} without {c}"
        for c, types in SPECIFIC.items():
            if et not in types:
                assert r.get(c, "") == "", f"{et} must not have {c}"
        for c, allowed in VALUES.items():
            if r.get(c):
                assert r[c] in allowed, (c, r[c])
        if r.get("ParentEventID"):
            assert by_id[r["ParentEventID"]]["EventType"] == "Compile"
        if r.get("SourceLocation"):
            assert r["SourceLocation"].startswith("Text:")
        # timestamps carry their UTC offset, and it is the declared one
        ts = datetime.fromisoformat(r["ServerTimestamp"])
        assert ts.utcoffset() is not None
        assert r["ServerTimestamp"].endswith(r["ServerTimezone"])
        # every CodeStateID resolves to a CodeStates/ directory
        assert f"CodeStates/{r['CodeStateID']}/" in names, r["CodeStateID"]
    # consistent order: Order strictly increasing within the declared scope, and events of a
    # scope in time order along it
    groups: dict[tuple[str, ...], list[dict[str, str]]] = {}
    for r in rows:
        key = tuple(r[c] for c in scope_cols) if meta["EventOrderScope"] == "Restricted" else ()
        groups.setdefault(key, []).append(r)
    for seq in groups.values():
        seq.sort(key=lambda r: int(r["Order"]))
        orders = [int(r["Order"]) for r in seq]
        assert len(set(orders)) == len(orders), "Order must be strictly increasing"
        times = [datetime.fromisoformat(r["ServerTimestamp"]) for r in seq]
        assert times == sorted(times)
    return meta, rows, zf


# ---- seeded data ---------------------------------------------------------------------------

A, B = "202011111", "202022222"
T0 = datetime(2024, 3, 4, 1, 0, tzinfo=UTC)
HEADER_A = f"/* {A} 홍길동 */\n".encode()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def events() -> list[dict[str, Any]]:
    f = EventFactory("os-1", prefix="ps")
    v1 = HEADER_A + b"int main(void) {\n  return x\n}\n"
    v2 = HEADER_A + b"int main(void) {\n  return 0;\n}\n"
    return [
        f.save(A, "hw1", "main.c", at(0), v1),
        f.save(A, "hw1", "util.h", at(5), b"#pragma once\n"),
        f.build(
            A,
            "hw1",
            at(10),
            [
                diag(
                    "‘x’ undeclared (first use in this function)",
                    2,
                    10,
                    file=f"/workspace/os-1-{A}/hw1/main.c",
                ),
                diag("each undeclared identifier is reported only once", 2, 10, severity="note"),
                diag("expected ‘;’ before ‘}’ token", 2, 11),
                diag("unused parameter ‘argc’", 1, 14, severity="warning"),
            ],
        ),
        f.save(A, "hw1", "main.c", at(20), v2),
        f.build(A, "hw1", at(25)),
        f.run(A, "hw1", at(30)),
        f.run(A, "hw1", at(35), signal=11),
        f.rename(A, "hw1", "util.h", "helpers.h", at(40)),
        f.delete(A, "hw1", "helpers.h", at(45)),
        f.cell(A, "hw1", at(50), 0, source=f"student = '{A}'"),
        f.cell(A, "hw1", at(55), 1, ok=False),
        f.save(A, "hw2", "a b#?.c", at(60), b"int f(void);\n"),
        f.run(B, "hw1", at(1)),  # a run before any save: the empty code state
        f.save(B, "hw1", "main.c", at(2), b"int main(void) { return 1; }\n"),
    ]


@pytest.fixture
def seeded(
    client: TestClient, agent_headers: dict[str, str], reader_headers: dict[str, str]
) -> TestClient:
    r = client.post("/api/v1/events", json={"events": events()}, headers=agent_headers)
    assert r.status_code == 200, r.text
    assert {x["status"] for x in r.json()["results"]} == {"stored"}, r.json()
    client.headers.update(reader_headers)
    return client


def export(c: TestClient, **params: str) -> bytes:
    r = c.get("/api/v1/export/progsnap2", params={"class_div": "os-1", **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    return r.content


def test_progsnap2_class_export_checks(seeded: TestClient) -> None:
    meta, rows, zf = check_progsnap2(export(seeded))
    assert meta["EventOrderScope"] == "Restricted" and meta["EventOrderScopeColumns"] == "SubjectID"
    types = Counter(r["EventType"] for r in rows)
    assert types == {
        "File.Edit": 5, "Compile": 2, "Compile.Error": 2, "Compile.Warning": 1,
        "Run.Program": 5, "File.Rename": 1, "File.Delete": 1,
    }  # fmt: skip
    subjects = {r["SubjectID"] for r in rows}
    assert len(subjects) == 2 and all(len(s) == 16 for s in subjects)

    sid_a = next(r["SubjectID"] for r in rows if r["AssignmentID"] == "hw2")  # only A has hw2
    a_rows = [r for r in rows if r["AssignmentID"] == "hw1" and r["SubjectID"] == sid_a]
    assert {r["CourseID"] for r in rows} == {"os-1"}
    compile_ = next(r for r in a_rows if r["EventType"] == "Compile")
    assert compile_["CompileResult"] == "Error"
    errors = [r for r in rows if r["ParentEventID"] == compile_["EventID"]]
    assert [(e["EventType"], e["SourceLocation"], e["CodeStateSection"]) for e in errors] == [
        ("Compile.Error", "Text:2:10", "main.c"),  # workspace path cut to the assignment
        ("Compile.Error", "Text:2:11", "main.c"),
        ("Compile.Warning", "Text:1:14", "main.c"),
    ]
    # the compile's code state holds exactly what was saved before it
    state = compile_["CodeStateID"]
    files = sorted(n for n in zf.namelist() if n.startswith(f"CodeStates/{state}/") and
                   not n.endswith("/"))  # fmt: skip
    assert files == [f"CodeStates/{state}/main.c", f"CodeStates/{state}/util.h"]
    assert b"return x" in zf.read(f"CodeStates/{state}/main.c")
    runs = [r for r in a_rows if r["EventType"] == "Run.Program"]
    assert [(r["X-RunKind"], r["ProgramResult"], r["X-Signal"]) for r in runs] == [
        ("Program", "Success", ""), ("Program", "Error", "11"),
        ("NotebookCell", "Success", ""), ("NotebookCell", "Error", ""),
    ]  # fmt: skip
    rename = next(r for r in rows if r["EventType"] == "File.Rename")
    assert (rename["X-OldCodeStateSection"], rename["CodeStateSection"]) == ("util.h", "helpers.h")
    renamed_state = [
        n for n in zf.namelist() if n.startswith(f"CodeStates/{rename['CodeStateID']}/")
    ]
    assert any(n.endswith("/helpers.h") for n in renamed_state)
    delete = next(r for r in rows if r["EventType"] == "File.Delete")
    after_delete = [
        n for n in zf.namelist() if n.startswith(f"CodeStates/{delete['CodeStateID']}/")
    ]
    assert not any("helpers.h" in n or "util.h" in n for n in after_delete)
    odd = next(r for r in rows if r["AssignmentID"] == "hw2")
    assert zf.read(f"CodeStates/{odd['CodeStateID']}/a b#?.c") == b"int f(void);\n"
    # B ran a program before saving anything: an empty code state, which still resolves
    b_first = min((r for r in rows if r["SubjectID"] != sid_a),
                  key=lambda r: int(r["Order"]))  # fmt: skip
    assert b_first["EventType"] == "Run.Program"
    assert [n for n in zf.namelist() if n.startswith(f"CodeStates/{b_first['CodeStateID']}/")] == [
        f"CodeStates/{b_first['CodeStateID']}/"
    ]


def test_progsnap2_is_pseudonymous_and_salted_per_export(seeded: TestClient) -> None:
    first, second = export(seeded), export(seeded)
    for data in (first, second):
        _, rows, zf = check_progsnap2(data)
        blob = b"".join(zf.read(n) + n.encode() for n in zf.namelist())
        for raw in (A, B):
            assert raw.encode() not in blob, "a raw student id leaked into the dataset"
        # the id in A's header comment became A's SubjectID (same length of evidence kept)
        sid_a = next(r["SubjectID"] for r in rows if r["AssignmentID"] == "hw2")
        edit = next(
            r for r in rows if r["SubjectID"] == sid_a and r["CodeStateSection"] == "main.c"
        )
        assert zf.read(f"CodeStates/{edit['CodeStateID']}/main.c").startswith(
            f"/* {sid_a} 홍길동 */".encode()
        )
    s1 = {r["SubjectID"] for r in check_progsnap2(first)[1]}
    s2 = {r["SubjectID"] for r in check_progsnap2(second)[1]}
    assert s1.isdisjoint(s2), "every export must use a new salt"


def test_progsnap2_one_assignment_and_errors(seeded: TestClient) -> None:
    _, rows, _ = check_progsnap2(export(seeded, assignment="hw2"))
    assert [(r["EventType"], r["CodeStateSection"]) for r in rows] == [("File.Edit", "a b#?.c")]
    r = seeded.get("/api/v1/export/progsnap2", params={"class_div": "os-1", "assignment": "hw9"})
    assert r.status_code == 404
    assert seeded.get("/api/v1/export/progsnap2", params={"class_div": "nope-1"}).status_code == 404
