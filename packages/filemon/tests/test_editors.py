"""Real editors and tools save files; each save must be exactly one byte-exact version."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from inotify_simple import INotify  # type: ignore[import-untyped]
from inotify_simple import flags as F

from .conftest import Harness


class RawNames:
    """An independent inotify watch on one directory: proves the editor did what we claim."""

    def __init__(self, d: Path) -> None:
        self.ino = INotify(nonblocking=True)
        self.ino.add_watch(str(d), F.CREATE | F.MOVED_FROM | F.MOVED_TO | F.DELETE)
        self.seen: list[tuple[str, str]] = []

    def read(self) -> list[tuple[str, str]]:
        for ev in self.ino.read(timeout=0):
            kinds = [f.name for f in F.from_mask(ev.mask) if f != F.ISDIR]
            self.seen.extend((k, ev.name) for k in kinds)
        return self.seen

    def close(self) -> None:
        self.ino.close()


async def run(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
    await asyncio.to_thread(
        subprocess.run, list(argv), cwd=cwd, check=True, capture_output=True, env=env, timeout=30
    )


async def save_and_wait(h: Harness, rel: str, n: int) -> None:
    await h.wait_for(lambda: len(h.sink.versions(rel)) >= n)


def vim_lines(text: bytes) -> str:
    lines = text.decode().rstrip("\n").split("\n")
    return "[" + ",".join("'" + ln.replace("'", "''") + "'" for ln in lines) + "]"


@pytest.mark.parametrize(
    "vimset",
    [
        "set backup writebackup backupcopy=auto",  # rename to f.c~, write a new f.c
        "set nobackup writebackup backupcopy=auto",  # same, f.c~ removed after the write
        "set backup writebackup backupcopy=yes",  # copy to f.c~, overwrite in place
    ],
)
async def test_vim_each_save_one_version(harness: Harness, vimset: str) -> None:
    h = harness
    f = h.hw / "main.c"
    f.write_bytes(b"int main(void) { return 0; }\n")
    await save_and_wait(h, "main.c", 1)
    raw = RawNames(h.hw)
    versions = [f"/* v{i} */\nint main(void) {{ return {i}; }}\n".encode() for i in range(3)]
    try:
        for i, text in enumerate(versions):
            await run(
                "vim", "-Es", "-u", "NONE", "-i", "NONE", "-N",
                "-c", "set backupskip=",  # its default skips /tmp/*, where tests run
                "-c", vimset,
                "-c", f"call setline(1, {vim_lines(text)})",
                "-c", "normal gg",
                "-c", "wq",
                str(f),
            )  # fmt: skip
            await save_and_wait(h, "main.c", i + 2)
        await h.idle(min_wait=0.3)
    finally:
        seen = raw.read()
        raw.close()
    assert f.read_bytes() == versions[-1]
    assert h.sink.versions("main.c")[1:] == versions
    assert h.sink.deletes() == [] and h.sink.renames() == []
    assert len(h.sink.snapshots()) == 4
    if "backupcopy=auto" in vimset:
        # Real vim behaviour, not an imitation: the write probe and the backup rename.
        assert ("CREATE", "4913") in seen
        assert ("MOVED_FROM", "main.c") in seen and ("MOVED_TO", "main.c~") in seen
    else:
        assert ("CREATE", "main.c~") in seen and ("MOVED_FROM", "main.c") not in seen
    if "nobackup" in vimset:
        assert ("DELETE", "main.c~") in seen
    assert h.metric("file_events_total", event_type="modify") == 3
    assert h.metric("file_events_total", event_type="create") == 1


def _tmux_kill(sock: str) -> None:
    subprocess.run(["tmux", "-L", sock, "kill-server"], capture_output=True, timeout=10)


def _tmux(sock: str, *args: str) -> None:
    subprocess.run(["tmux", "-L", sock, *args], check=True, capture_output=True, timeout=10)


def _has(path: Path, want: bytes) -> bool:
    return path.exists() and path.read_bytes() == want


async def _wait_file(path: Path, want: bytes, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while not _has(path, want):
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never became {want!r}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("backup", [False, True])
async def test_nano_through_tmux(harness: Harness, backup: bool) -> None:
    h = harness
    f = h.hw / "hello.py"
    f.write_bytes(b"print('hi')\n")
    await save_and_wait(h, "hello.py", 1)
    sock = f"filemon-test-{os.getpid()}-{int(backup)}"
    nano = ["nano", "--ignorercfiles", *(["-B"] if backup else []), str(f)]
    env_cmd = "TERM=xterm " + " ".join(nano)
    _tmux(sock, "new-session", "-d", "-s", "ed", "-x", "120", "-y", "40", env_cmd)
    raw = RawNames(h.hw)
    try:
        expected = [b"print('hi')\n"]
        for i in range(3):
            await asyncio.sleep(0.3)  # nano is up and idle
            _tmux(sock, "send-keys", "-t", "ed", "-l", f"x{i} = {i}")
            _tmux(sock, "send-keys", "-t", "ed", "Enter")
            _tmux(sock, "send-keys", "-t", "ed", "C-o")
            await asyncio.sleep(0.2)
            _tmux(sock, "send-keys", "-t", "ed", "Enter")
            want = b"".join(f"x{j} = {j}\n".encode() for j in range(i + 1)) + b"print('hi')\n"
            await _wait_file(f, want)
            expected.append(want)
            await save_and_wait(h, "hello.py", i + 2)
        _tmux(sock, "send-keys", "-t", "ed", "C-x")
        await h.idle(min_wait=0.3)
    finally:
        await asyncio.to_thread(_tmux_kill, sock)
        seen = raw.read()
        raw.close()
    assert h.sink.versions("hello.py") == expected
    assert len(h.sink.snapshots()) == 4 and h.sink.deletes() == []
    if backup:
        assert (h.hw / "hello.py~").exists()
        assert ("CREATE", "hello.py~") in seen
    assert not any(s.path.endswith("~") for s in h.sink.snapshots())


def vscode_write(path: Path, data: bytes, pause: float = 0.0) -> None:
    """Node's fs.writeFile as VS Code / code-server uses it: O_TRUNC, chunked writes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if pause:
            time.sleep(pause)  # a slow writer: the file sits empty, still open
        for i in range(0, len(data), 4096):
            os.write(fd, data[i : i + 4096])
    finally:
        os.close(fd)


async def test_vscode_truncate_then_write_never_torn(harness: Harness) -> None:
    h = harness
    f = h.hw / "sort.cpp"
    versions = [
        (f"// v{i}\n" + "int a[] = {1,2,3};\n" * (300 * (i + 1))).encode() for i in range(4)
    ]
    for i, text in enumerate(versions):
        await asyncio.to_thread(vscode_write, f, text, 0.5 if i == 2 else 0.0)
        await save_and_wait(h, "sort.cpp", i + 1)
    await h.idle(min_wait=0.3)
    assert h.sink.versions("sort.cpp") == versions  # never an empty or half file
    assert len(h.sink.snapshots()) == 4


async def test_open_writer_without_close_is_taken_when_still(harness: Harness) -> None:
    h = harness
    f = h.hw / "log.txt"
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"still open\n")
        t0 = time.monotonic()
        await save_and_wait(h, "log.txt", 1)
        waited = time.monotonic() - t0
    finally:
        os.close(fd)
    await h.idle(min_wait=0.3)
    assert h.sink.versions("log.txt") == [b"still open\n"]
    assert 0.9 <= waited < 3.0  # quiet_s (1 s) of stillness, then taken


async def test_sed_in_place(harness: Harness) -> None:
    h = harness
    f = h.hw / "calc.py"
    f.write_bytes(b"a = 1\n")
    await save_and_wait(h, "calc.py", 1)
    raw = RawNames(h.hw)
    for i in range(2, 5):
        await run("sed", "-i", f"s/= {i - 1}/= {i}/", str(f))
        await save_and_wait(h, "calc.py", i)
    await h.idle(min_wait=0.3)
    seen = raw.read()
    raw.close()
    assert any(k == "MOVED_FROM" and n.startswith("sed") for k, n in seen)  # temp + rename
    assert h.sink.versions("calc.py") == [f"a = {i}\n".encode() for i in range(1, 5)]
    assert h.sink.deletes() == [] and h.sink.renames() == []


async def test_cp_new_and_over(harness: Harness, tmp_path: Path) -> None:
    h = harness
    src1, src2 = tmp_path / "s1.c", tmp_path / "s2.c"
    src1.write_bytes(b"one\n" * 1000)
    src2.write_bytes(b"two\n" * 3000)
    await run("cp", str(src1), str(h.hw / "copy.c"))
    await save_and_wait(h, "copy.c", 1)
    await run("cp", str(src2), str(h.hw / "copy.c"))
    await save_and_wait(h, "copy.c", 2)
    await h.idle(min_wait=0.3)
    assert h.sink.versions("copy.c") == [src1.read_bytes(), src2.read_bytes()]


def jupyter_save(path: Path, data: str, atomic: bool) -> None:
    """jupyter_server's FileContentsManager save (services/contents/fileio.py), both modes."""
    if not atomic:  # _simple_writing
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(data)
        return
    tmp = path.parent / (".~" + path.name)  # path_to_intermediate
    if path.is_file():
        shutil.copy2(path, tmp)  # copy2_safe
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if tmp.is_file():
        os.remove(tmp)


@pytest.mark.parametrize("atomic", [True, False])
async def test_jupyter_save(harness: Harness, atomic: bool) -> None:
    h = harness
    nb = h.hw / "lab.ipynb"
    cp = h.hw / ".ipynb_checkpoints"
    cp.mkdir()
    versions = []
    for i in range(3):
        text = '{"cells": [{"source": "x = ' + str(i) + '"}], "nbformat": 4}\n'
        versions.append(text.encode())
        await asyncio.to_thread(jupyter_save, nb, text, atomic)
        shutil.copy2(nb, cp / "lab-checkpoint.ipynb")  # the checkpoint jupyter also writes
        await save_and_wait(h, "lab.ipynb", i + 1)
    await h.idle(min_wait=0.3)
    assert h.sink.versions("lab.ipynb") == versions
    assert len(h.sink.snapshots()) == 3 and h.sink.deletes() == []


async def test_git_checkout_200_files(harness: Harness) -> None:
    h = harness
    n = 200
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    await run(*git, "init", "-q", "-b", "main", cwd=h.hw)
    for i in range(n):
        (h.hw / f"f{i:03d}.c").write_bytes(f"int f{i}(void) {{ return 0; }}\n".encode())
    await h.idle(min_wait=0.3)  # saves closer together than the settle are one version
    await run(*git, "add", ".", cwd=h.hw)
    await run(*git, "commit", "-q", "-m", "a", cwd=h.hw)
    await run(*git, "checkout", "-q", "-b", "other", cwd=h.hw)
    for i in range(n):
        (h.hw / f"f{i:03d}.c").write_bytes(f"int f{i}(void) {{ return {i + 1}; }}\n".encode())
    await run(*git, "commit", "-q", "-am", "b", cwd=h.hw)
    await h.idle(min_wait=0.3)
    base = len(h.sink.items)
    odd = {f"f{i:03d}.c": len(h.sink.versions(f"f{i:03d}.c")) for i in range(n)}
    assert {k: v for k, v in odd.items() if v != 2} == {}
    assert len(h.sink.snapshots()) == 2 * n
    await run(*git, "checkout", "-q", "main", cwd=h.hw)
    await h.idle(min_wait=0.3)
    new = h.sink.items[base:]
    assert len(new) == n  # exactly one version per rewritten file, nothing else
    for i in range(n):
        name = f"f{i:03d}.c"
        assert h.sink.versions(name)[-1] == (h.hw / name).read_bytes()
        assert h.sink.versions(name)[-1] == f"int f{i}(void) {{ return 0; }}\n".encode()
    assert not any(e.path.startswith(".git") for e, _ in h.sink.items)  # type: ignore[union-attr]
