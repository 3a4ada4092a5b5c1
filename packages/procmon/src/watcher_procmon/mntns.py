"""Per mount namespace (one per student pod): the workspace it has mounted, and a few of its
live processes.

The hostname is chosen by whoever controls the pod's UTS namespace, so a student who may
run ``hostname`` can name any other student. What is mounted at the container root
(``/home/coder/project``) is what the pod's files actually are. Assumption: in production
the pod's workspace is a ``subPath`` of the workspaces volume, so the mount's *root* field in
``/proc/<pid>/mountinfo`` (the directory of the source filesystem that is mounted) ends in
``<subject>-<division>-<studentId>``; the tests bind-mount ``<root>/<workspace>`` the same
way. When no configured root is a mount point, or its root does not end in a workspace
name (a whole-volume mount, a differently named export), the workspace is unknown and the
hostname alone decides, as before.

Mountinfo is read once per namespace and a found workspace cached; the entry is trusted
while the process it was read from (its *anchor*) is still alive in that namespace: a live
member keeps the namespace alive, so its inode number (reused once freed) still names the
same pod. "No workspace" is not cached: a pod that mounts its workspace itself (as the
tests do) runs commands before the mount exists; in production the runtime mounts it
before any process starts, so a miss there is a pod without one, read again per exec.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import OrderedDict
from dataclasses import dataclass

from watcher_common.identity import DEFAULT, IdentityConfig, Workspace, parse_workspace_dir
from watcher_procmon.events import ExecEvent
from watcher_procmon.sources import open_pid, stand_in

MAX_NAMESPACES = 1024  # cache entries and peer lists kept (LRU); a node runs far fewer pods
# live processes kept per namespace: the oldest survivors (a shell, the editor's server
# outlive a build) and the newest
PEERS_PER_NAMESPACE = 8
MAX_MOUNTINFO = 1 << 20  # a container's mountinfo is a few KiB; don't read without bound

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class Mount:
    mount_id: int
    parent_id: int
    root: str  # the directory of the source filesystem mounted here
    mount_point: str  # relative to the reading process's root
    fstype: str
    source: str


def _unescape(field: bytes) -> str:
    # the kernel writes space, tab, newline and backslash as \040 \011 \012 \134
    if b"\\" in field:  # rare: skip the regex for the usual field
        field = _OCTAL.sub(lambda m: bytes([int(m[1], 8) & 0xFF]), field)
    return os.fsdecode(field)


def parse_mountinfo(data: bytes) -> list[Mount]:
    """``/proc/<pid>/mountinfo`` (proc(5)), in file order; malformed lines are skipped.

    ``36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw``: the optional
    fields before ``-`` vary in number, so the separator is searched for.
    """
    out: list[Mount] = []
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            root = _unescape(fields[3])
            # a bind mount of a directory deleted since shows as "<path>//deleted"
            root = root.removesuffix("//deleted")
            out.append(
                Mount(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    root=root,
                    mount_point=_unescape(fields[4]),
                    fstype=_unescape(fields[sep + 1]),
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue
    return out


def mounted_workspace(mounts: list[Mount], ident: IdentityConfig = DEFAULT) -> Workspace | None:
    """The workspace mounted at a configured (fixed) container root, or None.

    At a root mounted more than once, the *first* mount wins: mountinfo lists mounts in
    creation order, the pod runtime mounts the workspace before any student process runs,
    and a mount a student stacks on top later must not rename the pod's owner.
    """
    roots = [posixpath.normpath(r) for r in ident.container_roots if "{" not in r]
    for root in roots:
        first = next((m for m in mounts if posixpath.normpath(m.mount_point) == root), None)
        if first is None:
            continue
        name = posixpath.basename(posixpath.normpath(first.root))
        ws = parse_workspace_dir(name, ident)
        if isinstance(ws, Workspace):
            return ws
    return None


@dataclass(frozen=True, slots=True)
class _Cached:
    workspace: Workspace
    anchor_pid: int
    anchor_ticks: int  # the anchor's start time (clock ticks): tells a recycled pid


class Namespaces:
    """mntns inode -> mounted workspace (cached) and recent live pids (for stand-ins)."""

    def __init__(self, ident: IdentityConfig = DEFAULT, proc: str = "/proc") -> None:
        self.ident = ident
        self.proc = proc
        self._cache: OrderedDict[int, _Cached] = OrderedDict()
        self._peers: OrderedDict[int, OrderedDict[int, int]] = OrderedDict()
        self._ns_of: dict[int, int] = {}  # tgid -> mntns, to forget it at its exit
        self.mountinfo_reads = 0

    # ---- live processes -------------------------------------------------------------

    def exec(self, ev: ExecEvent) -> None:
        if not ev.mntns:
            return
        old = self._ns_of.get(ev.tgid)
        if old is not None and old != ev.mntns:
            self.exit(ev.tgid)
        peers = self._peers.setdefault(ev.mntns, OrderedDict())
        self._peers.move_to_end(ev.mntns)
        if ev.tgid not in peers and len(peers) >= PEERS_PER_NAMESPACE:
            # full: the newest gives way (older ones have proven they live long)
            gone, _ = peers.popitem(last=True)
            self._ns_of.pop(gone, None)
        peers[ev.tgid] = ev.fork_ns
        self._ns_of[ev.tgid] = ev.mntns
        while len(self._peers) > MAX_NAMESPACES:
            _, dropped = self._peers.popitem(last=False)
            for tgid in dropped:
                self._ns_of.pop(tgid, None)

    def exit(self, tgid: int) -> None:
        ns = self._ns_of.pop(tgid, None)
        if ns is None:
            return
        peers = self._peers.get(ns)
        if peers is not None:
            peers.pop(tgid, None)
            if not peers:
                del self._peers[ns]

    def peers(self, mntns: int) -> list[tuple[int, int]]:
        """``(pid, fork_ns)`` of processes seen exec'ing in ``mntns``, oldest first (they may
        have exited since: callers check)."""
        return list(self._peers.get(mntns, {}).items())

    def prune(self, mntns: int) -> None:
        """Forget peers of ``mntns`` that are gone (an exit we did not see: e.g. the pod
        renamed itself out of the traced prefix, so the kernel filtered it)."""
        for pid, fork_ns in self.peers(mntns):
            got = open_pid(pid, self.proc, fork_ns=fork_ns, mntns=mntns)
            if got is None:
                self.exit(pid)
            else:
                os.close(got[0])

    # ---- mounted workspace ------------------------------------------------------------

    def workspace(self, ev: ExecEvent) -> Workspace | None:
        """The workspace mounted in ``ev``'s pod; None when unknown (see the module doc)."""
        if not ev.mntns:
            return None
        hit = self._cache.get(ev.mntns)
        if hit is not None:
            live = open_pid(hit.anchor_pid, self.proc, mntns=ev.mntns)
            if live is not None:
                os.close(live[0])
                if live[1] == hit.anchor_ticks:
                    self._cache.move_to_end(ev.mntns)
                    return hit.workspace
            del self._cache[ev.mntns]
        found = stand_in(
            ev.tgid,
            ev.fork_ns,
            ppid=ev.ppid,
            mntns=ev.mntns,
            peers=self.peers(ev.mntns),
            proc=self.proc,
        )
        if found is None:
            return None
        try:
            fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=found.pid_fd)
            try:
                data = _read_all(fd, MAX_MOUNTINFO)
            finally:
                os.close(fd)
        except OSError:
            return None
        finally:
            os.close(found.pid_fd)
        self.mountinfo_reads += 1
        ws = mounted_workspace(parse_mountinfo(data), self.ident)
        if ws is None:
            return None
        self._cache[ev.mntns] = _Cached(ws, found.pid, found.start_ticks)
        while len(self._cache) > MAX_NAMESPACES:
            self._cache.popitem(last=False)
        return ws


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
