"""The REAL jupyter_server ContentsManager saves into a watched assignment, with atomic writing
on and off: each save is exactly one byte-exact version, with no delete/create/rename noise
and no ``.~`` intermediate file or checkpoint stored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_server.services.contents.filemanager import FileContentsManager

from .conftest import WS, Harness
from .test_editors import RawNames


def _notebook(i: int) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# Lab, save {i}"),
        nbformat.v4.new_code_cell("\n".join(f"x{j} = {j} * {i}" for j in range(i + 1))),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    return dict(nb)


@pytest.mark.parametrize("atomic", [True, False])
async def test_real_jupyter_server_save(
    harness: Harness, atomic: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = harness
    for var in ("DATA", "CONFIG", "RUNTIME"):  # the notary's DB etc. stay out of $HOME
        monkeypatch.setenv(f"JUPYTER_{var}_DIR", str(tmp_path / f"jupyter-{var.lower()}"))
    cm = FileContentsManager(root_dir=str(h.root / WS))
    cm.use_atomic_writing = atomic
    raw = RawNames(h.hw)
    expected: dict[str, list[bytes]] = {"lab.ipynb": [], "solve.py": []}
    saves = [("lab.ipynb", i) for i in range(3)] + [("solve.py", i) for i in range(3)]
    try:
        for name, i in saves:
            if name.endswith(".ipynb"):
                model = {"type": "notebook", "format": "json", "content": _notebook(i)}
            else:
                text = "".join(f"def f{j}():\n    return {j * i}\n\n" for j in range(i + 1))
                model = {"type": "file", "format": "text", "content": text}
            out = await asyncio.to_thread(cm.save, model, f"hw1/{name}")
            assert out["path"] == f"hw1/{name}"
            on_disk = (h.hw / name).read_bytes()
            assert on_disk not in expected[name]  # every save really is different
            expected[name].append(on_disk)
            n = len(expected[name])
            await h.wait_for(lambda name=name, n=n: len(h.sink.versions(name)) >= n)
            # Byte-exact with the disk right after this save.
            assert h.sink.versions(name)[-1] == on_disk
        await h.idle(min_wait=0.4)
    finally:
        seen = raw.read()
        raw.close()

    # Real jupyter_server behaviour, not an imitation.
    assert (h.hw / ".ipynb_checkpoints" / "lab-checkpoint.ipynb").is_file()
    if atomic:  # copy to .~name, rewrite in place, remove the copy (only once a file exists)
        for name in expected:
            assert ("CREATE", f".~{name}") in seen and ("DELETE", f".~{name}") in seen
    else:
        assert not any(n.startswith(".~") for _, n in seen)
    assert not any(k.startswith("MOVED") for k, _ in seen)

    # Exactly one version per save, byte-exact, and nothing else.
    for name, versions in expected.items():
        assert h.sink.versions(name) == versions
    assert len(h.sink.snapshots()) == len(saves)
    assert h.sink.deletes() == [] and h.sink.renames() == []
    assert not any(".~" in s.path or "checkpoint" in s.path for s in h.sink.snapshots())
    assert h.metric("file_events_total", event_type="create") == 2
    assert h.metric("file_events_total", event_type="modify") == len(saves) - 2
    assert h.metric("file_events_total", event_type="delete") == 0
