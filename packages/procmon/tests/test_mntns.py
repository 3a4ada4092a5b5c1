"""The workspace mounted in a pod (mountinfo parsing, the per-namespace cache) and who a
run is attributed to when the hostname disagrees with it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from watcher_common.identity import IdentityConfig, NotStudent, Workspace
from watcher_procmon.events import ExecEvent
from watcher_procmon.mntns import Mount, Namespaces, mounted_workspace, parse_mountinfo
from watcher_procmon.sources import capture_sources
from watcher_procmon.to_wire import Origin, origin

ME = Workspace("os", "1", "202600001")
OTHER = Workspace("os", "1", "202600002")
PROJECT = "/home/coder/project"


def _fork_ns(pid: int) -> int:
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _mntns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/mnt").st_ino


def _exec(pid: int, ppid: int = 0, mntns: int | None = None) -> ExecEvent:
    return ExecEvent(
        ts_ns=0, tgid=pid, ns_tgid=pid, ppid=ppid, uid=0, gid=0, flags=0, cgroup_id=0,
        fork_ns=_fork_ns(pid), pidns=0, mntns=_mntns(pid) if mntns is None else mntns,
        nodename="jcode-os-1-202600002", filename="/usr/bin/gcc", argv=("gcc",),
        argv_truncated=False, argv_len=4, exe="/usr/bin/gcc", cwd=PROJECT,
    )  # fmt: skip


# ---- mountinfo ------------------------------------------------------------------------

MOUNTINFO = (
    b"22 1 0:21 / /proc rw,relatime shared:5 - proc proc rw\n"
    # no optional fields; spaces, a tab and a backslash escaped in root and mount point
    b"68 45 0:41 / /home rw,relatime - tmpfs tmpfs rw\n"
    b"69 68 254:0 /srv/my\\040codes/os-1-202600001 /home/coder/project rw - ext4 /dev/vda rw\n"
    b"70 68 254:0 /a\\011b\\134c /home/x\\040y\\012z rw master:1 propagate_from:2 - ext4 "
    b"/dev/vda rw\n"
    # a subPath of an NFS volume (production), Korean (UTF-8 bytes) in the path
    b"71 45 0:50 /exports/\xea\xb0\x95\xec\x9d\x98/data-structure-1-202012345 /workspace rw"
    b" - nfs4 nfs:/exports rw\n"
    b"72 45 0:51 /gone/os-1-202600001//deleted /mnt/del rw - ext4 /dev/vda rw\n"
    b"garbage line\n"
    b"\n"
)


def test_parse_mountinfo_fields_and_escapes() -> None:
    got = {m.mount_id: m for m in parse_mountinfo(MOUNTINFO)}
    assert sorted(got) == [22, 68, 69, 70, 71, 72]  # malformed and blank lines skipped
    assert got[69] == Mount(69, 68, "/srv/my codes/os-1-202600001", PROJECT, "ext4", "/dev/vda")
    assert (got[70].root, got[70].mount_point) == ("/a\tb\\c", "/home/x y\nz")
    assert got[71].root == "/exports/강의/data-structure-1-202012345"
    assert (got[71].fstype, got[71].source) == ("nfs4", "nfs:/exports")
    assert got[72].root == "/gone/os-1-202600001"


def test_mounted_workspace_from_the_mount_root() -> None:
    assert mounted_workspace(parse_mountinfo(MOUNTINFO)) == ME
    nfs = IdentityConfig(container_roots=("/workspace",))
    assert mounted_workspace(parse_mountinfo(MOUNTINFO), nfs) == Workspace(
        "data-structure", "1", "202012345"
    )
    # an escaped space in the configured root itself
    spaced = IdentityConfig(container_roots=("/home/x y\nz",))
    assert mounted_workspace(parse_mountinfo(MOUNTINFO), spaced) is None  # "/a\tb\\c"


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/", None),  # the whole volume: no workspace name to read
        ("/codes", None),
        ("/codes/os-1-202600001/hw1", None),  # a deeper directory is not a workspace
        ("/codes/os-1-202600001/", ME),
        ("/os\\0401-202600001", None),  # "os 1-202600001": not a workspace name
    ],
)
def test_mounted_workspace_needs_a_workspace_named_root(
    root: str, expected: Workspace | None
) -> None:
    line = f"69 68 254:0 {root} {PROJECT} rw - ext4 /dev/vda rw\n".encode()
    assert mounted_workspace(parse_mountinfo(line)) == expected


def test_the_first_mount_at_the_root_wins() -> None:
    """A student who stacks another directory named like someone's workspace on the root
    does not rename the pod: the runtime's mount came first."""
    lines = (
        f"69 68 254:0 /codes/os-1-202600001 {PROJECT} rw - ext4 /dev/vda rw\n"
        f"80 69 0:60 /tmp/os-1-202600002 {PROJECT} rw - overlay overlay rw\n"
    ).encode()
    assert mounted_workspace(parse_mountinfo(lines)) == ME


def test_templated_roots_are_not_mount_roots() -> None:
    line = b"69 68 254:0 /codes/os-1-202600001 /workspace/os-1-202600001 rw - ext4 x rw\n"
    assert mounted_workspace(parse_mountinfo(line)) is None


# ---- attribution --------------------------------------------------------------------------


def test_hostname_naming_another_student_keeps_the_mounted_owner() -> None:
    org = origin("jcode-os-1-202600002-7d9f8b6c5-x2kqz", f"{PROJECT}/hw5", [], mounted=ME)
    assert isinstance(org, Origin)
    assert (org.workspace, org.assignment, org.mismatch, org.mismatch_cause) == (
        ME, "hw5", True, "mount"
    )  # fmt: skip


def test_agreeing_or_unknown_mount() -> None:
    agree = origin("jcode-os-1-202600001", f"{PROJECT}/hw5", [], mounted=ME)
    assert isinstance(agree, Origin) and agree.workspace == ME and not agree.mismatch
    unknown = origin("jcode-os-1-202600002", f"{PROJECT}/hw5", [])
    assert isinstance(unknown, Origin) and unknown.workspace == OTHER and not unknown.mismatch


def test_unparseable_hostname_with_a_mounted_workspace_is_flagged() -> None:
    org = origin("jcode-whatever", f"{PROJECT}/hw5", [], mounted=ME)
    assert isinstance(org, Origin) and org.workspace == ME and org.mismatch_cause == "mount"
    assert isinstance(origin("jcode-whatever", f"{PROJECT}/hw5", []), NotStudent)


def test_path_mismatch_is_still_flagged() -> None:
    org = origin("jcode-os-1-202600001", "/", ["/workspace/os-1-202600002/hw5/a.c"], mounted=ME)
    assert isinstance(org, Origin) and org.workspace == ME and org.mismatch_cause == "path"


# ---- the per-namespace cache, on real processes -------------------------------------------


def test_no_workspace_mounted_is_read_again_only_after_a_mount(tmp_path: Path) -> None:
    """A pod that mounts its workspace itself: "none" is cached until its mount table
    changes, then the mount is seen at the next exec."""
    if os.geteuid() != 0:
        pytest.skip("mount namespaces need root; CI runs as root")
    ws = tmp_path / "codes" / "os-1-202600001"
    ws.mkdir(parents=True)
    script = (
        f"set -e; mount -t tmpfs tmpfs /home; mkdir -p {PROJECT}; echo ready; read x; "
        f'mount --bind "$1" {PROJECT}; echo mounted; exec sleep 30'
    )
    p = subprocess.Popen(
        ["unshare", "--mount", "--fork", "sh", "-c", script, "sh", str(ws)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert p.stdin is not None and p.stdout is not None
    ns = Namespaces()
    try:
        assert p.stdout.readline() == b"ready\n"
        shell = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
        for _ in range(3):
            assert ns.workspace(_exec(shell)) is None
        assert ns.mountinfo_reads == 1
        p.stdin.write(b"\n")
        p.stdin.flush()
        assert p.stdout.readline() == b"mounted\n"
        sleeper = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
        assert ns.workspace(_exec(sleeper)) == ME
        assert ns.workspace(_exec(sleeper)) == ME
        assert ns.mountinfo_reads == 2
    finally:
        ns.close()
        with contextlib.suppress(ProcessLookupError, ValueError, IndexError, OSError):
            kids = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
            for kid in kids:
                os.kill(int(kid), signal.SIGKILL)
        p.kill()
        p.wait()
        p.stdin.close()
        p.stdout.close()


def test_host_namespace_without_a_workspace_is_read_once() -> None:
    ns = Namespaces()
    me = os.getpid()
    try:
        assert ns.workspace(_exec(me)) is None
        assert ns.workspace(_exec(me)) is None
        assert ns.mountinfo_reads == 1
    finally:
        ns.close()


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A process in its own mount namespace with ``<tmp>/codes/os-1-202600001`` bind-mounted
    at the container root (the way the e2e pods are made); yields it and its sleep's pid."""
    if os.geteuid() != 0:
        pytest.skip("mount namespaces need root; CI runs as root")
    ws = tmp_path / "codes" / "os-1-202600001"
    ws.mkdir(parents=True)
    script = (
        f"set -e; mount -t tmpfs tmpfs /home; mkdir -p {PROJECT}; "
        f'mount --bind "$1" {PROJECT}; echo ready; exec sleep 30'
    )
    p = subprocess.Popen(
        ["unshare", "--mount", "--fork", "sh", "-c", script, "sh", str(ws)],
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"
    sleeper = int(Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()[0])
    yield p, sleeper
    # unshare without --pid does not take its child with it: end the sleep first
    with contextlib.suppress(ProcessLookupError):
        os.kill(sleeper, signal.SIGKILL)
    p.kill()
    p.wait()
    assert p.stdout is not None
    p.stdout.close()


def test_workspace_read_once_per_namespace_while_its_anchor_lives(
    pod: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, sleeper = pod
    ns = Namespaces()
    assert ns.workspace(_exec(sleeper)) == ME
    # another process of the pod, exited before we look: answered from the cache
    exited = replace(_exec(sleeper), tgid=1 << 30, ns_tgid=5, fork_ns=1)
    assert ns.workspace(exited) == ME
    assert ns.mountinfo_reads == 1


def test_a_dead_anchor_forces_a_fresh_read(pod: tuple[subprocess.Popen[bytes], int]) -> None:
    _, sleeper = pod
    ns = Namespaces()
    assert ns.workspace(_exec(sleeper)) == ME
    mntns = _mntns(sleeper)
    os.kill(sleeper, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{sleeper}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    # the namespace is gone: its inode number could name another pod now, so no answer
    gone = _exec(os.getpid(), mntns=mntns)
    assert ns.workspace(gone) is None
    assert ns.mountinfo_reads == 1
    assert ns.cached() == 0  # and its fds are closed: the namespace is not kept alive


def test_sweep_closes_entries_whose_anchor_exited(
    pod: tuple[subprocess.Popen[bytes], int],
) -> None:
    _, sleeper = pod
    ns = Namespaces()
    assert ns.workspace(_exec(sleeper)) == ME
    assert ns.sweep(now=time.monotonic() + 10) == 0 and ns.cached() == 1
    os.kill(sleeper, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{sleeper}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ns.sweep(now=time.monotonic() + 100) == 1 and ns.cached() == 0


def test_sources_are_read_through_the_anchors_root(
    pod: tuple[subprocess.Popen[bytes], int], tmp_path: Path
) -> None:
    """Capture-on-exec reads through the cached anchor's root, as the pod sees its files
    (the workspace mounted at PROJECT), without opening anything in /proc; not once the
    anchor is gone."""
    _, sleeper = pod
    (tmp_path / "codes" / "os-1-202600001" / "main.c").write_text("int pod;\n")
    ns = Namespaces()
    mntns = _mntns(sleeper)
    assert ns.root(mntns) is None  # nothing cached yet
    assert ns.workspace(_exec(sleeper)) == ME
    anchor = ns.root(mntns)
    assert anchor is not None and anchor[0] == sleeper
    # a compiler that already exited, seen through a /proc that has nothing
    reads, via = capture_sources(
        1 << 30, 1, PROJECT, ("main.c",), ppid=7, mntns=mntns, proc="/nonexistent", anchor=anchor
    )
    assert via == "peer" and [(r.status, r.sha256) for r in reads] == [
        ("ok", hashlib.sha256(b"int pod;\n").hexdigest())
    ]
    os.kill(sleeper, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{sleeper}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ns.root(mntns) is None
    ns.close()


def test_peers_keep_the_oldest_survivors_and_forget_exits() -> None:
    ns = Namespaces()
    me = os.getpid()
    base = _exec(me, mntns=7)
    for pid in range(100, 120):
        ns.exec(replace(base, tgid=pid, fork_ns=pid))
    got = [p for p, _ in ns.peers(7)]
    assert got[:7] == list(range(100, 107)) and got[7] == 119 and len(got) == 8
    ns.exit(100)
    assert 100 not in [p for p, _ in ns.peers(7)]
    ns.prune(7)  # none of these pids is a live process of namespace 7
    assert ns.peers(7) == []
