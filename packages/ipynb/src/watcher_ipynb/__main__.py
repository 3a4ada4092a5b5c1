"""``python -m watcher_ipynb``: install the startup file, or print a notebook's code view."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from watcher_ipynb.codeview import code_view
from watcher_ipynb.startup import default_profile_dir, install_startup


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m watcher_ipynb",
        description="JCode Watcher Jupyter hook: logs executed cells to a hidden local file.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    inst = sub.add_parser(
        "install-startup",
        help="write the IPython startup file that loads the hook in every kernel",
    )
    inst.add_argument(
        "--profile-dir",
        type=Path,
        default=None,
        help=f"IPython profile directory (default: {default_profile_dir()})",
    )
    view = sub.add_parser("code-view", help="print a notebook's cell sources (outputs dropped)")
    view.add_argument("notebook", type=Path)
    args = ap.parse_args(argv)

    if args.cmd == "install-startup":
        print(install_startup(args.profile_dir))
        return 0
    text = code_view(args.notebook.read_bytes())
    if text is None:
        print(f"{args.notebook}: not a notebook (invalid JSON or no cells)", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
