"""Reading the results back through the backend's public API (reader token)."""

from __future__ import annotations

from typing import Any

import httpx

from .procs import wait_until
from .students import Student, sha

PROGRAM_KINDS = ("build", "buildtool", "run", "interpreter")


def versions(
    api: httpx.Client, st: Student, hw: str, path: str, source: str | None = "filemon"
) -> list[dict[str, Any]]:
    url = f"/api/v1/classes/{st.class_div}/assignments/{hw}/students/{st.student_id}/files/versions"
    r = api.get(url, params={"path": path})
    if r.status_code == 404:
        return []
    assert r.status_code == 200, r.text
    got: list[dict[str, Any]] = r.json()
    return [v for v in got if source is None or v["source"] == source]


def wait_versions(
    api: httpx.Client, st: Student, hw: str, path: str, n: int, within_s: float = 30.0
) -> list[dict[str, Any]]:
    return wait_until(
        lambda: v if len(v := versions(api, st, hw, path)) >= n else None,
        within_s,
        f"{n} versions of {hw}/{path}",
    )


def files(api: httpx.Client, st: Student, hw: str) -> dict[str, dict[str, Any]]:
    url = f"/api/v1/classes/{st.class_div}/assignments/{hw}/students/{st.student_id}/files"
    r = api.get(url)
    if r.status_code == 404:
        return {}
    assert r.status_code == 200, r.text
    return {f["path"]: f for f in r.json()}


def timeline(api: httpx.Client, st: Student, hw: str, kinds: str) -> list[dict[str, Any]]:
    url = f"/api/v1/classes/{st.class_div}/assignments/{hw}/students/{st.student_id}/timeline"
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"kinds": kinds, "limit": 1000}
        if cursor:
            params["cursor"] = cursor
        r = api.get(url, params=params)
        if r.status_code == 404:
            return []
        assert r.status_code == 200, r.text
        page = r.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


def runs(api: httpx.Client, st: Student, hw: str) -> list[dict[str, Any]]:
    """Every build/run of the student in the assignment (not the shell's helpers)."""
    out = []
    for item in timeline(api, st, hw, "build,run"):
        if item["category"] in PROGRAM_KINDS:
            r = api.get(f"/api/v1/runs/{item['run_id']}")
            assert r.status_code == 200, r.text
            out.append(r.json())
    return out


def wait_runs(
    api: httpx.Client, st: Student, hw: str, n: int, within_s: float = 30.0
) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]] | None:
        items = [i for i in timeline(api, st, hw, "build,run") if i["category"] in PROGRAM_KINDS]
        return runs(api, st, hw) if len(items) >= n else None

    return wait_until(enough, within_s, f"{n} runs of {st.workspace}/{hw}")


def assert_saved_exactly(api: httpx.Client, st: Student, hw: str) -> None:
    """Every version the student saved in ``hw`` is stored once, in order, byte-exact;
    nothing else was stored by filemon for those files."""
    for (h, path), datas in st.saved.items():
        if h != hw:
            continue
        got = wait_versions(api, st, hw, path, len(datas))
        assert [g["sha256"] for g in got] == [sha(d) for d in datas], (path, got)
        assert all(g["student_id"] == st.student_id for g in got)
        assert all(g["class_div"] == st.class_div and g["assignment"] == hw for g in got)
        for g, data in zip(got, datas, strict=True):
            r = api.get(f"/api/v1/snapshots/{g['snapshot_id']}/content")
            assert r.status_code == 200 and r.content == data, (path, r.status_code)


def by_argv(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in items:
        out.setdefault(" ".join(r["argv"]), []).append(r)
    return out
