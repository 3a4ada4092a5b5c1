"""A notebook's code-only view: what a diff between two .ipynb versions should compare.

The raw file is what filemon stores; its outputs, execution counts and metadata change on
every run and drown the student's edits in a diff. The view keeps the cell sources only,
in jupytext's "percent" style::

    # %% [code]
    import math

    # %% [markdown]
    ## Part 2
"""

from __future__ import annotations

import json
from typing import Any


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(v for v in value if isinstance(v, str))
    return ""


def _cells(doc: Any) -> list[Any] | None:
    if not isinstance(doc, dict):
        return None
    cells = doc.get("cells")  # nbformat 4
    if isinstance(cells, list):
        return cells
    sheets = doc.get("worksheets")  # nbformat 3
    if isinstance(sheets, list):
        out: list[Any] = []
        for ws in sheets:
            if isinstance(ws, dict) and isinstance(ws.get("cells"), list):
                out.extend(ws["cells"])
        return out
    return None


def code_view(ipynb: bytes) -> str | None:
    """Cell sources joined with ``# %% [<cell type>]`` separators; None if not a notebook."""
    try:
        doc = json.loads(ipynb.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # bad JSON, bad UTF-8, absurd nesting
        return None
    cells = _cells(doc)
    if cells is None:
        return None
    parts: list[str] = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        kind = kind if isinstance(kind, str) and kind.isidentifier() else "code"
        # nbformat 3 code cells keep their source under "input".
        src = _text(cell.get("source", cell.get("input")))
        if src and not src.endswith("\n"):
            src += "\n"
        parts.append(f"# %% [{kind}]\n{src}")
    return "\n".join(parts)
