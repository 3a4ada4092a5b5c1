"""Where the compiled ``procmon.bpf.o`` is: env, then the source tree's build dir, then the
copy the image build installs into the package."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ENV_VAR = "WATCHER_PROCMON_BPF_OBJ"
OBJ_NAME = "procmon.bpf.o"
BUILD_HINT = "build it with: make -C packages/procmon bpf"


def candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    out: list[Path] = []
    if env := os.environ.get(ENV_VAR):
        out.append(Path(env))
    out.append(here.parents[1] / "build" / OBJ_NAME)  # packages/procmon/build (source tree)
    out.append(here / "bpf" / OBJ_NAME)  # installed package data (container image)
    return out


def find_bpf_object() -> Path:
    """The first existing candidate; FileNotFoundError naming all of them otherwise."""
    env = os.environ.get(ENV_VAR)
    if env and not Path(env).is_file():
        # an explicit setting that points nowhere is an error, not a reason to fall back
        raise FileNotFoundError(f"{ENV_VAR}={env} does not exist")
    for path in candidates():
        if path.is_file():
            return path
    tried = ", ".join(str(p) for p in candidates())
    raise FileNotFoundError(f"{OBJ_NAME} not found (tried {tried}); {BUILD_HINT}")


def build_bpf_object() -> Path:
    """For tests and benchmarks in a source checkout: the ``WATCHER_PROCMON_BPF_OBJ``
    override, else ``make -C packages/procmon bpf`` (a no-op when up to date) and its output."""
    if env := os.environ.get(ENV_VAR):
        return Path(env)
    make = shutil.which("make")
    if make is None:
        raise FileNotFoundError(f"make is needed to build {OBJ_NAME} (scripts/install-deps.sh)")
    pkg = Path(__file__).resolve().parents[2]  # packages/procmon
    subprocess.run([make, "-s", "-C", str(pkg), "bpf"], check=True)
    return pkg / "build" / OBJ_NAME
