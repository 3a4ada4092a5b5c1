"""code_view on notebooks as Jupyter saves them, and on things that are not notebooks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from watcher_ipynb.codeview import code_view

# What JupyterLab 4 writes (nbformat 4.5): sources as line lists, outputs, metadata.
NOTEBOOK = {
    "cells": [
        {
            "cell_type": "markdown",
            "id": "a1",
            "metadata": {},
            "source": ["# 과제 1\n", "Compute things."],
        },
        {
            "cell_type": "code",
            "execution_count": 7,
            "id": "b2",
            "metadata": {"scrolled": True},
            "outputs": [
                {"name": "stdout", "output_type": "stream", "text": ["42\n"]},
                {
                    "data": {"image/png": "iVBORw0KGgo=", "text/plain": ["<Figure>"]},
                    "metadata": {},
                    "output_type": "display_data",
                },
            ],
            "source": ["import math\n", "print(6 * 7)"],
        },
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "c3",
            "metadata": {},
            "outputs": [],
            "source": [],
        },
        {"cell_type": "raw", "id": "d4", "metadata": {}, "source": "raw text\n"},
    ],
    "metadata": {"kernelspec": {"display_name": "Python 3", "name": "python3"}},
    "nbformat": 4,
    "nbformat_minor": 5,
}

EXPECTED = (
    "# %% [markdown]\n# 과제 1\nCompute things.\n\n"
    "# %% [code]\nimport math\nprint(6 * 7)\n\n"
    "# %% [code]\n\n"
    "# %% [raw]\nraw text\n"
)


def dump(nb: object) -> bytes:
    return (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode()


def test_code_view_of_a_real_notebook() -> None:
    assert code_view(dump(NOTEBOOK)) == EXPECTED


def test_outputs_and_counts_do_not_change_the_view() -> None:
    rerun = json.loads(json.dumps(NOTEBOOK))
    rerun["cells"][1]["execution_count"] = 12
    rerun["cells"][1]["outputs"] = []
    rerun["metadata"]["widgets"] = {"state": {}}
    assert code_view(dump(rerun)) == code_view(dump(NOTEBOOK))
    edited = json.loads(json.dumps(NOTEBOOK))
    edited["cells"][1]["source"][1] = "print(6 * 9)"
    assert code_view(dump(edited)) == EXPECTED.replace("6 * 7", "6 * 9")


def test_not_a_notebook_is_none() -> None:
    for junk in [b"", b"{", b"\xff\xfe{}", b"[1, 2]", b'{"a": 1}', b"null", b"[" * 100_000]:
        assert code_view(junk) is None, junk[:10]
    assert code_view(b'{"cells": []}') == ""
    # Odd cells are skipped or defaulted, never an exception.
    odd = {"cells": [1, {"source": 5}, {"cell_type": "x y", "source": "s"}], "nbformat": 4}
    assert code_view(dump(odd)) == "# %% [code]\n\n# %% [code]\ns\n"


def test_nbformat3_worksheets() -> None:
    v3 = {
        "nbformat": 3,
        "worksheets": [
            {
                "cells": [
                    {"cell_type": "code", "input": ["x = 1\n", "x"], "outputs": []},
                    {"cell_type": "markdown", "source": "hi"},
                ]
            }
        ],
    }
    assert code_view(dump(v3)) == "# %% [code]\nx = 1\nx\n\n# %% [markdown]\nhi\n"


def test_cli_code_view(tmp_path: Path) -> None:
    nb = tmp_path / "lab.ipynb"
    nb.write_bytes(dump(NOTEBOOK))
    out = subprocess.run(
        [sys.executable, "-m", "watcher_ipynb", "code-view", str(nb)],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert out.stdout.decode() == EXPECTED
