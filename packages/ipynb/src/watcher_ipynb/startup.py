"""The IPython startup file a student pod image drops into its profile.

IPython runs every ``*.py`` in ``<profile>/startup/`` in each new kernel; ours loads the
extension through the extension manager, so a later ``%load_ext watcher_ipynb`` is a
no-op instead of a second hook. It leaves no names in the user namespace.
"""

from __future__ import annotations

import os
from pathlib import Path

STARTUP_NAME = "00-watcher-ipynb.py"

STARTUP_SOURCE = """\
# JCode Watcher: log each executed cell (time, ok/error, exception name) to a hidden
# .watcher-cells.jsonl next to the notebook. Local file only, no network; never raises.
# Written by `python -m watcher_ipynb install-startup`.
try:
    get_ipython().extension_manager.load_extension("watcher_ipynb")  # noqa: F821
except Exception:
    pass
"""


def default_profile_dir(env: dict[str, str] | None = None) -> Path:
    e = dict(os.environ) if env is None else env
    base = e.get("IPYTHONDIR") or os.path.join(os.path.expanduser("~"), ".ipython")
    return Path(base) / "profile_default"


def install_startup(profile_dir: Path | None = None) -> Path:
    """Write (or refresh) the startup file; returns its path. Atomic: a kernel starting
    meanwhile sees the old file or the new one, never half of it."""
    startup = (profile_dir or default_profile_dir()) / "startup"
    startup.mkdir(parents=True, exist_ok=True)
    target = startup / STARTUP_NAME
    # Not *.py: IPython must not run the temporary file.
    tmp = startup / f".{STARTUP_NAME}.{os.getpid()}.tmp"
    tmp.write_text(STARTUP_SOURCE, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target
