"""JCode Watcher's Jupyter hook (``%load_ext watcher_ipynb``) and .ipynb helpers.

Importing this package never imports IPython: filemon and the backend use the parsing
helpers (``cellfmt``, ``codeview``) without it.
"""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    # Lazy import keeps `import watcher_ipynb` as cheap as possible for non-IPython users.
    from watcher_ipynb.hook import register

    register(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from watcher_ipynb.hook import unregister

    unregister(ipython)
