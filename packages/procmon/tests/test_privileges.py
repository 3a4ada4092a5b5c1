"""The least-privilege set works: ``watcher-procmon --check`` loads and attaches with only
CAP_BPF + CAP_PERFMON + CAP_SYS_PTRACE (as root with a reduced bounding set, like a
container granted just those, and as an unprivileged uid with them as ambient caps); the
seed's SYS_ADMIN + SYS_PTRACE works too; without CAP_BPF or CAP_PERFMON it exits with the
clear message. (test_cli.py covers "no capabilities at all".)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from watcher_procmon import main as cli

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv (util-linux) to hand out a reduced capability set",
)

CMD = [sys.executable, "-m", "watcher_procmon.main", "--check"]
# capability bit numbers (linux/capability.h)
CAP_BITS = {"sys_ptrace": 19, "sys_admin": 21, "perfmon": 38, "bpf": 39}
NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def _setpriv(caps: list[str], user: list[str] | None = None) -> list[str]:
    spec = ",".join(["-all", *(f"+{c}" for c in caps)])
    return [
        "setpriv",
        *(user or []),
        f"--bounding-set={spec}",
        f"--inh-caps={spec}",
        f"--ambient-caps={spec}",
        "--",
    ]


def _effective(prefix: list[str]) -> int:
    """CapEff of a process started under ``prefix`` (proves the reduction took effect)."""
    out = subprocess.run(
        [*prefix, "grep", "^CapEff:", "/proc/self/status"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[1], 16)


def _user_can_run(user: list[str], bpf_object: Path) -> bool:
    """Whether that uid can read the object and import the agent from this checkout."""
    probe = [sys.executable, "-c", "import watcher_procmon.main"]
    readable = subprocess.run(["setpriv", *user, "--", "test", "-r", str(bpf_object)])
    imports = subprocess.run(["setpriv", *user, "--", *probe], capture_output=True)
    return readable.returncode == 0 and imports.returncode == 0


def _check(prefix: list[str], bpf_object: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *CMD, "--bpf-object", str(bpf_object)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("caps", "user"),
    [
        (["bpf", "perfmon", "sys_ptrace"], None),  # root in a container granted only these
        (["bpf", "perfmon", "sys_ptrace"], NOBODY),  # non-root uid with ambient caps
        (["sys_admin", "sys_ptrace"], None),  # the seed's DaemonSet set
    ],
    ids=["root-least", "nobody-least", "seed-sys-admin"],
)
def test_check_loads_and_attaches_with_only(
    caps: list[str], user: list[str] | None, bpf_object: Path
) -> None:
    if user is not None and not _user_can_run(user, bpf_object):
        pytest.skip("uid 65534 cannot read this checkout (python, the package or the object)")
    prefix = _setpriv(caps, user)
    assert _effective(prefix) == sum(1 << CAP_BITS[c] for c in caps)
    proc = _check(prefix, bpf_object)
    assert proc.returncode == 0, proc.stderr
    assert "procmon check ok: BPF programs loaded and attached" in proc.stderr


@pytest.mark.parametrize("missing", ["bpf", "perfmon"])
def test_without_one_of_the_least_set_fails_clearly(missing: str, bpf_object: Path) -> None:
    caps = [c for c in ("bpf", "perfmon", "sys_ptrace") if c != missing]
    prefix = _setpriv(caps)
    assert _effective(prefix) & (1 << CAP_BITS[missing]) == 0
    proc = _check(prefix, bpf_object)
    assert proc.returncode == cli.EXIT_CANNOT_RUN, proc.stderr
    assert "insufficient privileges" in proc.stderr
    assert "CAP_BPF + CAP_PERFMON" in proc.stderr
