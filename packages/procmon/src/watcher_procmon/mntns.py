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

Mountinfo is read once per namespace and the answer cached while the process it was read
from (its *anchor*) is alive: a live member keeps the namespace alive, so its inode number
(reused once freed) still names the same pod. The entry holds the anchor's pidfd (readable
once it exits: one ``poll`` per exec instead of re-opening ``/proc/<pid>``) and the open
``mountinfo`` file, which pins the namespace and reports any change to its mount table
(``POLLPRI``), and its root directory (``O_PATH``): capture-on-exec reads a compile's
sources through it (:meth:`Namespaces.root`) instead of opening and checking
``/proc/<pid>/root`` of the compiler each time (five syscalls of ~ten per compile). "No
workspace" is cached too, but only until the mount table changes: a pod that mounts its
workspace itself (as the tests do) runs commands before the mount exists. Entries whose
anchor exited are closed by :meth:`Namespaces.sweep` (the agent calls it every second), so a
dead pod's namespace is not kept alive by us.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import select
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from watcher_common.identity import DEFAULT, IdentityConfig, Workspace, parse_workspace_dir
from watcher_procmon.events import ExecEvent
from watcher_procmon.sources import StandIn, open_pid, stand_in

MAX_NAMESPACES = 1024  # peer lists kept (LRU); a node runs far fewer pods
# workspace answers kept (LRU): each holds two fds, so well below the usual 1024 fd limit
MAX_CACHED = 256
SWEEP_S = 1.0  # how often entries whose anchor exited are closed
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


class _Cached:
    """One namespace's answer and the two fds that keep it true (see the module doc)."""

    __slots__ = ("anchor_pid", "mountinfo_fd", "pidfd", "poller", "root_fd", "stale", "workspace")

    def __init__(
        self,
        workspace: Workspace | None,
        anchor_pid: int,
        mountinfo_fd: int,
        pidfd: int,
        root_fd: int = -1,
    ) -> None:
        self.workspace = workspace
        self.anchor_pid = anchor_pid
        self.mountinfo_fd = mountinfo_fd
        self.pidfd = pidfd
        self.root_fd = root_fd  # the anchor's root (O_PATH); -1: could not be opened
        self.stale = False  # the mount table changed since mountinfo was last read
        self.poller = select.poll()
        self.poller.register(mountinfo_fd, select.POLLPRI)
        self.poller.register(pidfd, select.POLLIN)

    def alive(self) -> bool:
        """Whether the anchor still lives; notes a mount table change in ``stale`` (the
        kernel reports each change once)."""
        alive = True
        for fd, _ in self.poller.poll(0):
            if fd == self.pidfd:
                alive = False
            else:
                self.stale = True
        return alive

    def close(self) -> None:
        os.close(self.mountinfo_fd)
        os.close(self.pidfd)
        if self.root_fd >= 0:
            os.close(self.root_fd)


class Namespaces:
    """mntns inode -> mounted workspace (cached) and recent live pids (for stand-ins)."""

    def __init__(self, ident: IdentityConfig = DEFAULT, proc: str = "/proc") -> None:
        self.ident = ident
        self.proc = proc
        self._cache: OrderedDict[int, _Cached] = OrderedDict()
        self._peers: OrderedDict[int, OrderedDict[int, int]] = OrderedDict()
        self._ns_of: dict[int, int] = {}  # tgid -> mntns, to forget it at its exit
        self.mountinfo_reads = 0
        self._batch = False
        self._polled: set[int] = set()  # namespaces whose anchor was polled in this batch
        self._next_sweep = time.monotonic() + SWEEP_S

    def begin_batch(self) -> None:
        """Until end_batch(): each namespace's anchor is polled at most once."""
        self._batch = True

    def end_batch(self) -> None:
        self._batch = False
        self._polled.clear()

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

    def iter_peers(self, mntns: int) -> Iterator[tuple[int, int]]:
        """:meth:`peers`, listed at the first ``next()`` (most captures never ask)."""
        yield from self.peers(mntns)

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

    def root(self, mntns: int) -> tuple[int, int] | None:
        """``(anchor pid, root fd)`` of ``mntns``'s cached anchor, if it is alive (polled in
        this read, as :meth:`workspace` does: call that first); None otherwise. The fd
        stays owned by the cache. A process of the namespace that chroot'ed elsewhere sees
        another root: the pods this traces run their users without that privilege."""
        hit = self._cache.get(mntns)
        if hit is None or hit.root_fd < 0:
            return None
        if mntns not in self._polled and not hit.alive():
            return None
        return hit.anchor_pid, hit.root_fd

    def workspace(self, ev: ExecEvent) -> Workspace | None:
        """The workspace mounted in ``ev``'s pod; None when unknown (see the module doc)."""
        if not ev.mntns:
            return None
        hit = self._cache.get(ev.mntns)
        if hit is not None:
            # within one ring buffer read the anchor is polled once per namespace (a
            # syscall per exec otherwise; the read's records all predate it anyway)
            if ev.mntns in self._polled or hit.alive():
                if self._batch:
                    self._polled.add(ev.mntns)
                self._cache.move_to_end(ev.mntns)
                if hit.workspace is None and hit.stale:
                    # a found workspace is kept (the first mount wins); a miss is re-read
                    hit.stale = False
                    try:
                        hit.workspace = self._read(hit.mountinfo_fd)
                    except OSError:
                        del self._cache[ev.mntns]
                        hit.close()
                        return None
                return hit.workspace
            del self._cache[ev.mntns]
            hit.close()
        # the parent first: usually the pod's shell, an anchor that outlives the command
        found: StandIn | None = None
        if ev.ppid > 1 and (
            got := open_pid(ev.ppid, self.proc, born_by_ns=ev.fork_ns, mntns=ev.mntns)
        ):
            found = StandIn(ev.ppid, *got, "parent")
        else:
            found = stand_in(
                ev.tgid,
                ev.fork_ns,
                mntns=ev.mntns,
                peers=self.peers(ev.mntns),
                proc=self.proc,
            )
        if found is None:
            return None
        try:
            try:
                fd = os.open("mountinfo", os.O_RDONLY | os.O_CLOEXEC, dir_fd=found.pid_fd)
            except OSError:
                return None
            try:
                ws = self._read(fd)
            except OSError:
                os.close(fd)
                return None
            pidfd = _pidfd(found.pid, found.pid_fd)
            root_fd = -1
            # if it cannot be opened, sources are read through the processes themselves
            if pidfd is not None:
                with contextlib.suppress(OSError):
                    root_fd = os.open(
                        "root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=found.pid_fd
                    )
        finally:
            os.close(found.pid_fd)
        if pidfd is None:  # the anchor just exited: the answer holds, but is not kept
            os.close(fd)
            return ws
        self._cache[ev.mntns] = _Cached(ws, found.pid, fd, pidfd, root_fd)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)[1].close()
        return ws

    def _read(self, fd: int) -> Workspace | None:
        os.lseek(fd, 0, os.SEEK_SET)
        data = _read_all(fd, MAX_MOUNTINFO)
        self.mountinfo_reads += 1
        return mounted_workspace(parse_mountinfo(data), self.ident)

    def sweep(self, now: float | None = None) -> int:
        """Close the entries whose anchor exited (at most every SWEEP_S); how many."""
        now = time.monotonic() if now is None else now
        if now < self._next_sweep:
            return 0
        self._next_sweep = now + SWEEP_S
        dead = [ns for ns, c in self._cache.items() if not c.alive()]
        for ns in dead:
            self._cache.pop(ns).close()
        return len(dead)

    def cached(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        while self._cache:
            self._cache.popitem()[1].close()


def _pidfd(pid: int, pid_dir_fd: int) -> int | None:
    """A pidfd of the process whose ``/proc/<pid>`` is ``pid_dir_fd``; None if it is gone
    (or pidfds are not available)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        # the pid may have been recycled before pidfd_open: the /proc/<pid> directory
        # opened earlier answers only while that same process lives
        os.stat("stat", dir_fd=pid_dir_fd)
    except OSError:
        os.close(pidfd)
        return None
    return pidfd


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 16))):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
