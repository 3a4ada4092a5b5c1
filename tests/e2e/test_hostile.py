"""Hostile input from inside a student pod: odd file names, symlinks out of the workspace,
a 100 MB file, binaries."""

from __future__ import annotations

from .api import assert_saved_exactly, files, versions, wait_versions
from .conftest import StudentFactory, needs_root
from .procs import System

pytestmark = needs_root


def test_odd_names_symlinks_big_and_binary(system: System, student: StudentFactory) -> None:
    st, hw = student("202600003"), "hw6"
    st.sh(f"mkdir -p {hw}", cwd="")
    odd = ["a#1.c", "what?.c", "new\nline.c", "n" * 253 + ".c", "sp ace @x.py"]
    for i, name in enumerate(odd):
        assert len(name.encode()) <= 255
        st.vscode_save(name, f"int odd{i};\n".encode(), hw)
        wait_versions(system.api, st, hw, name, 1)  # separate saves, not one burst
        st.vscode_save(name, f"int odd{i}_v2;\n".encode(), hw)
    # symlinks pointing outside the workspace: a file and a directory (never followed)
    st.sh("ln -s /etc/passwd passwd.c && ln -s /etc etc && ln -s ../../.. up", cwd=hw)
    # 100 MB of text: metadata only; a binary with a source name: skipped
    st.sh("yes 'int big;' | head -c 104857600 > big.c", cwd=hw)
    st.sh("printf 'int x;\\0\\1\\2binary' > blob.c", cwd=hw)
    st.vscode_save("last.c", b"int last;\n", hw)  # a marker: everything before it is in
    system.drained()
    assert_saved_exactly(system.api, st, hw)
    stored = files(system.api, st, hw)
    big = versions(system.api, st, hw, "big.c")
    assert len(big) == 1 and big[0]["too_large"] and not big[0]["has_content"], big
    assert big[0]["size"] == 104857600
    assert set(stored) == {*odd, "last.c", "big.c"}, sorted(stored)
    assert not any(p.startswith(("etc/", "up/")) or p == "passwd.c" for p in stored)
