"""Main scenario: N students, each in their own pod, edit with vim, nano (through tmux), a
VS Code-style truncate-write and a Jupyter-style atomic save, compile with gcc / g++ /
clang / javac (one compile fails), run programs that succeed, fail (exit 3) and segfault.
Everything is then read back through the public API (v1 and compat, reader token).

``E2E_STUDENTS`` sets N (default 3: the whole e2e suite must fit the 2-core CI budget).
"""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .api import assert_saved_exactly, by_argv, files, wait_runs, wait_versions
from .conftest import StudentFactory, needs_root
from .procs import System
from .students import PROJECT, Student, sha

pytestmark = needs_root

N = int(os.environ.get("E2E_STUDENTS", "3"))
HW = "hw1"

BUILDS = {
    "gcc -o main main.c": 0,
    "g++ -o seg seg.cpp": 0,
    "clang -o fail fail.c": 0,
    "javac Hello.java": 0,
    "gcc -c bad.c": 1,
}
RUNS: dict[str, tuple[int | None, int | None]] = {  # argv -> (exit code, signal)
    "./main": (0, None),
    "./fail": (3, None),
    "./seg": (None, signal.SIGSEGV),
    "java Hello": (0, None),
}
SOURCE_OF = {
    "gcc -o main main.c": "main.c",
    "g++ -o seg seg.cpp": "seg.cpp",
    "clang -o fail fail.c": "fail.c",
    "javac Hello.java": "Hello.java",
    "gcc -c bad.c": "bad.c",
}


def session(system: System, st: Student) -> dict[str, int]:
    """One student's scripted session; returns what each program exited with (as seen by
    the student's shell: negative = killed by that signal)."""
    api, sid = system.api, st.student_id
    st.sh(f"mkdir -p {HW}", cwd="")

    def save_and_wait(path: str) -> None:
        wait_versions(api, st, HW, path, len(st.saved[(HW, path)]))

    st.vim_save(
        "main.c", f'#include <stdio.h>\nint main(void) {{ puts("v1 {sid}"); return 0; }}\n'.encode()
    )
    save_and_wait("main.c")
    st.nano_save("fail.c", [f"/* {sid} */", "int main(void) { return 3; }"])
    save_and_wait("fail.c")
    seg = f"// {sid}\nint main() {{ volatile int *p = nullptr; *p = 1; return 0; }}\n"
    st.vscode_save("seg.cpp", seg.encode())
    save_and_wait("seg.cpp")
    for i in (1, 2):
        nb = f'{{"cells": [{{"source": "x = {i}  # {sid}"}}], "nbformat": 4}}\n'
        st.jupyter_save("lab.ipynb", nb.encode())
        save_and_wait("lab.ipynb")
    java = (
        f"public class Hello {{\n  public static void main(String[] a) {{\n"
        f'    System.out.println("hello {sid}");\n  }}\n}}\n'
    )
    st.vim_save("Hello.java", java.encode())
    save_and_wait("Hello.java")
    st.vscode_save("bad.c", f"/* {sid} */\nint main(void) {{\n  return undefined_x\n}}\n".encode())
    save_and_wait("bad.c")
    st.vim_save(
        "main.c",
        f'#include <stdio.h>\nint main(void) {{ puts("v2 {sid}"); return 0; }}\n'.encode(),
    )
    save_and_wait("main.c")
    status = {}
    for cmd in [*BUILDS, *RUNS]:
        status[cmd] = st.run(cmd.split(), cwd=HW, timeout=120).returncode
    return status


def check_runs(system: System, st: Student, status: dict[str, int]) -> None:
    api = system.api
    got = by_argv(wait_runs(api, st, HW, len(BUILDS) + len(RUNS)))
    assert set(got) == set(BUILDS) | set(RUNS), sorted(got)
    for cmd, items in got.items():
        assert len(items) == 1, f"{cmd} stored {len(items)} times"
        run: dict[str, Any] = items[0]
        # identity: the pod's hostname, its workspace and the assignment of its cwd
        assert (run["class_div"], run["student_id"], run["assignment"]) == (
            st.class_div,
            st.student_id,
            HW,
        )
        assert run["hostname"] == st.hostname and not run["identity_mismatch"]
        assert run["cwd"] == f"{PROJECT}/{HW}"
        if cmd in BUILDS:
            assert run["category"] == "build", run
            assert run["exit_code"] == BUILDS[cmd] == status[cmd], (cmd, run, status[cmd])
            path = SOURCE_OF[cmd]
            (src,) = run["sources"]
            compiled = st.saved[(HW, path)][-1]  # the last version saved before the build
            assert (src["path"], src["sha256"], src["size"]) == (path, sha(compiled), len(compiled))
            assert src["snapshot_id"] is not None, run  # the compiled code is stored...
            snap = api.get(f"/api/v1/snapshots/{src['snapshot_id']}").json()
            assert snap["sha256"] == sha(compiled) and snap["path"] == path  # ...and linked
            assert snap["student_id"] == st.student_id
        else:
            exit_code, sig = RUNS[cmd]
            assert run["category"] == ("interpreter" if cmd.startswith("java ") else "run")
            assert (run["exit_code"], run["signal"]) == (exit_code, sig), (cmd, run)
            assert status[cmd] == (exit_code if sig is None else -sig)
    bad = got["gcc -c bad.c"][0]
    errors = [d for d in bad["diagnostics"] if d["severity"] == "error"]
    assert errors and all(d["file"] == "bad.c" for d in errors), bad["diagnostics"]
    assert any("undefined_x" in d["message"] for d in errors), errors
    assert "error" in (bad["stderr_excerpt"] or "")
    for cmd in BUILDS:
        if cmd != "gcc -c bad.c":
            assert got[cmd][0]["diagnostics"] == [], got[cmd][0]


def check_compat(system: System, st: Student) -> None:
    api, base = system.api, f"/api/{st.class_div}/{HW}/{st.student_id}"
    builds = api.get(f"{base}/logs/build").json()
    assert sorted((b["cmdline"], b["exit_code"]) for b in builds) == sorted(BUILDS.items())
    for b in builds:
        data = st.saved[(HW, SOURCE_OF[b["cmdline"]])][-1]
        assert b["file_size"] == len(data) and b["cwd"] == f"{PROJECT}/{HW}"
    runs = {r["cmdline"]: r["exit_code"] for r in api.get(f"{base}/logs/run").json()}
    assert set(runs) == set(RUNS) and runs["./main"] == 0 and runs["./fail"] == 3
    names = api.get(base).json()
    assert names == sorted(p for (_, p) in st.saved)
    stamps = api.get(f"{base}/main.c").json()
    assert len(stamps) >= 1 and all(len(s) == 15 and s[8] == "_" for s in stamps)


def test_students_edit_build_run(system: System, student: StudentFactory) -> None:
    pods = [student(f"2024{i:05d}") for i in range(N)]
    with ThreadPoolExecutor(max_workers=N) as pool:
        statuses = list(pool.map(lambda st: session(system, st), pods))
    system.drained()
    for st, status in zip(pods, statuses, strict=True):
        assert_saved_exactly(system.api, st, HW)
        # nothing but the saved sources: no binaries, .class files, editor or atomic-save
        # temporaries
        stored = files(system.api, st, HW)
        assert set(stored) == {p for (_, p) in st.saved}, sorted(stored)
        check_runs(system, st, status)
        check_compat(system, st)
    assert system.filemon.running and system.procmon.running and system.backend.running
