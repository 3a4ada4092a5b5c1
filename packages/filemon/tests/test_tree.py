"""Tree-level guarantees: new-directory race, deletes/renames, noise, restarts, overflow."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest

from .conftest import WS, Harness


def _sh(script: str, cwd: Path) -> None:
    subprocess.run(["sh", "-c", script], cwd=cwd, check=True, timeout=60)


async def test_mkdir_p_then_write_always_captured(harness: Harness) -> None:
    h = harness
    n = 200
    script = "\n".join(f"mkdir -p r{i}/b/c && printf 'x{i}\\n' > r{i}/b/c/f.c" for i in range(n))
    await asyncio.to_thread(_sh, script, h.hw)
    await h.idle(min_wait=0.3)
    for i in range(n):
        assert h.sink.versions(f"r{i}/b/c/f.c") == [f"x{i}\n".encode()], i
    assert len(h.sink.snapshots()) == n


async def test_real_delete_and_rename(harness: Harness) -> None:
    h = harness
    (h.hw / "a.c").write_bytes(b"a\n")
    (h.hw / "b.c").write_bytes(b"b\n")
    (h.hw / "src").mkdir()
    for i in range(3):
        (h.hw / "src" / f"m{i}.py").write_bytes(f"m{i}\n".encode())
    await h.idle(min_wait=0.3)
    assert len(h.sink.snapshots()) == 5
    (h.hw / "a.c").unlink()
    (h.hw / "b.c").rename(h.hw / "c.c")
    (h.hw / "src").rename(h.hw / "lib")
    await h.idle(min_wait=0.5)
    assert [d.path for d in h.sink.deletes()] == ["a.c"]
    got = sorted((r.old_path, r.path) for r in h.sink.renames())
    assert got == [("b.c", "c.c")] + [(f"src/m{i}.py", f"lib/m{i}.py") for i in range(3)]
    assert len(h.sink.snapshots()) == 5  # a rename is not a new version
    # The renamed directory is still watched under its new name.
    (h.hw / "lib" / "m0.py").write_bytes(b"m0 v2\n")
    await h.idle(min_wait=0.3)
    assert h.sink.versions("lib/m0.py") == [b"m0 v2\n"]
    assert h.metric("file_events_total", event_type="delete") == 1


async def test_rename_to_noise_then_recreate_is_a_save(harness: Harness) -> None:
    h = harness
    f = h.hw / "x.c"
    f.write_bytes(b"v1\n")
    await h.idle(min_wait=0.3)
    os.rename(f, h.hw / "x.c~")  # what vim/emacs do, done by hand
    f.write_bytes(b"v2\n")
    await h.idle(min_wait=0.3)
    assert h.sink.versions("x.c") == [b"v1\n", b"v2\n"]
    assert h.sink.deletes() == [] and h.sink.renames() == []
    os.rename(f, h.hw / "x.c.bak")  # no recreation: a real delete
    await h.idle(min_wait=0.3)
    assert [d.path for d in h.sink.deletes()] == ["x.c"]


async def test_noise_is_never_emitted(harness: Harness) -> None:
    h = harness
    names = [
        "4913", "x.c~", ".x.c.swp", ".x.c.swx", ".~lab.ipynb", "x.c.vsctmp", "sedAb12Cd",
        ".goutputstream-ABC123", "x.py___jb_tmp___", "x.py___jb_old___", "#x.c#", "a.out",
        "data.bin", "image.png",
    ]  # fmt: skip
    for name in names:
        (h.hw / name).write_bytes(b"noise\n")
    for d in [".ipynb_checkpoints", "__pycache__", ".git", "node_modules", "venv", ".venv"]:
        (h.hw / d).mkdir()
        (h.hw / d / "x.py").write_bytes(b"noise\n")
    env = h.hw / "myenv"  # a virtualenv under another name
    (env / "lib").mkdir(parents=True)
    (env / "pyvenv.cfg").write_bytes(b"home = /usr\n")
    (env / "lib" / "site.py").write_bytes(b"noise\n")
    (h.hw / "bin.c").write_bytes(b"\x7fELF\x00\x00binary")
    (h.hw / "real.c").write_bytes(b"real\n")
    await h.idle(min_wait=0.4)
    assert [s.path for s in h.sink.snapshots()] == ["real.c"]
    assert h.metric("watcher_filemon_skipped_total", reason="noise") >= 9
    assert h.metric("watcher_filemon_skipped_total", reason="binary") == 1
    assert h.fm is not None
    watched = set(h.fm.tree.watched_dirs())
    assert f"{WS}/hw1/.git" not in watched and f"{WS}/hw1/myenv/lib" not in watched


async def test_which_files(harness: Harness, tmp_path: Path) -> None:
    h = harness
    ws = h.root / WS
    (ws / "notes.c").write_bytes(b"outside an assignment\n")
    (ws / "project").mkdir()
    (ws / "project" / "p.c").write_bytes(b"not an assignment dir\n")
    (h.root / "lost+found").mkdir()
    (h.root / "lost+found" / "x.c").write_bytes(b"not a workspace\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.c").write_bytes(b"never follow\n")
    (h.hw / "link").symlink_to(outside)
    (h.hw / "link.c").symlink_to(outside / "secret.c")
    (h.hw / "Makefile").write_bytes(b"all:\n")
    (h.hw / "큰 파일 #1 @x?.py").write_bytes(b"print('hangul')\n")
    big = b"/*" + b"x" * (1 << 20) + b"*/\n"
    (h.hw / "big.c").write_bytes(big)
    await h.idle(min_wait=0.4)
    snaps = {s.path: s for s in h.sink.snapshots()}
    assert set(snaps) == {"Makefile", "큰 파일 #1 @x?.py", "big.c"}
    assert snaps["big.c"].too_large and snaps["big.c"].sha256 is None
    assert snaps["big.c"].size == len(big)
    assert h.metric("watcher_filemon_skipped_total", reason="outside_assignment") >= 1
    assert h.metric("watcher_filemon_skipped_total", reason="not_regular") >= 1
    s = snaps["Makefile"]
    assert (s.class_div, s.student_id, s.assignment) == ("os-1", "202012345", "hw1")


async def test_restart_captures_changes_made_while_down(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    await h.start()
    for n in "abc":
        (h.hw / f"{n}.c").write_bytes(f"{n}1\n".encode())
    await h.idle(min_wait=0.3)
    await h.stop()
    assert len(h.sink.snapshots()) == 3
    (h.hw / "a.c").write_bytes(b"a2\n")
    (h.hw / "b.c").unlink()
    (h.hw / "d.c").write_bytes(b"d1\n")
    os.utime(h.hw / "d.c", (1, 1))  # old mtime: read at once, not after a settle
    mark = len(h.sink.items)
    await h.start()
    try:
        await h.idle(min_wait=0.3)
        new = h.sink.items[mark:]
        got = sorted((e.kind, e.path, c) for e, c in new)  # type: ignore[union-attr]
        assert got == [
            ("file.delete", "b.c", None),
            ("file.snapshot", "a.c", b"a2\n"),
            ("file.snapshot", "d.c", b"d1\n"),
        ]
        assert all(e.reconciled for e, _ in new)  # type: ignore[union-attr]
        assert h.metric("watcher_filemon_rescans_total", reason="startup") == 1
    finally:
        await h.stop()
    # A restart with nothing changed emits nothing.
    mark = len(h.sink.items)
    await h.start()
    try:
        await h.idle(min_wait=0.3)
        assert h.sink.items[mark:] == []
    finally:
        await h.stop()


QUEUE = Path("/proc/sys/fs/inotify/max_queued_events")


def _set_queue(value: str) -> str:
    old = QUEUE.read_text().strip()
    QUEUE.write_text(value + "\n")
    return old


@pytest.mark.skipif(not os.access(QUEUE, os.W_OK), reason="needs root to lower the queue")
async def test_overflow_rescans_and_last_version_matches_disk(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    old = _set_queue("128")  # read once, when an inotify instance is created
    try:
        await h.start()
    finally:
        _set_queue(old)
    try:
        files, rounds = 1000, 11

        # A separate process, as a student's would be: 11,000 writes as fast as it can.
        writer = f"""
import os
for d in range(20):
    os.makedirs("d%d" % d)
for r in range({rounds}):
    for i in range({files}):
        with open("d%d/f%d.py" % (i % 20, i), "w") as f:
            f.write("# round %d file %d\\n" % (r, i))
"""
        await asyncio.to_thread(
            subprocess.run, [sys.executable, "-c", writer], cwd=h.hw, check=True, timeout=60
        )
        await h.idle(min_wait=0.5, within_s=60)
        assert h.fm is not None
        assert h.fm.overflows >= 1
        assert h.metric("watcher_filemon_overflows_total") >= 1
        assert h.metric("watcher_filemon_rescans_total", reason="overflow") >= 1
        for i in range(files):
            rel = f"d{i % 20}/f{i}.py"
            assert h.sink.versions(rel)[-1] == (h.hw / rel).read_bytes(), rel
    finally:
        await h.stop()


async def test_metrics_exposition(harness: Harness) -> None:
    h = harness
    (h.hw / "m.c").write_bytes(b"m\n")
    await h.idle(min_wait=0.3)
    text = generate_latest(h.registry).decode()
    assert "# HELP file_events_total Total number of file events detected\n" in text
    assert 'file_events_total{event_type="create"} 1.0' in text
    assert WS not in text and "202012345" not in text
    out = await asyncio.to_thread(
        subprocess.run,
        ["promtool", "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr.decode() + out.stdout.decode()
