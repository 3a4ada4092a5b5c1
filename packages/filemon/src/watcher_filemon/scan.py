"""Whole-tree scans: at start-up, after an inotify overflow, and periodically.

A scan walks the tree (adding any missing watches), hands every file to the capturer,
which reads only what its state cannot prove unchanged (size, mtime, ctime, inode), and
reports state entries the walk did not find as possibly deleted. Everything a scan finds
is emitted with ``reconciled=True``. It yields to the event loop regularly so live
inotify events keep flowing during a 100k-file scan.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from watcher_filemon.capture import Capturer
from watcher_filemon.watch_tree import WatchTree

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ScanResult:
    reason: str
    dirs: int
    files: int
    missing: int
    limit_hits: int
    seconds: float


async def full_scan(
    tree: WatchTree, capturer: Capturer, *, reason: str, yield_every: int = 512
) -> ScanResult:
    t0 = time.monotonic()
    hits_before = tree.limit_hits
    visited: set[str] = set()
    seen: set[str] = set()
    n = 0
    for rel, entry in tree.walk("", visited):
        seen.add(rel)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            capturer.scan_found(rel, st)
        n += 1
        if n % yield_every == 0:
            capturer.batch_done()
            await asyncio.sleep(0)
    missing = 0
    for rel in capturer.state.paths():
        if rel not in seen:
            capturer.scan_missing(rel)
            missing += 1
    # Watches on directories that are gone or renamed away while we were not looking.
    for d in tree.watched_dirs():
        if d and d not in visited:
            try:
                if stat.S_ISDIR(os.lstat(tree.abspath(d)).st_mode):
                    continue
            except OSError:
                pass
            tree.forget(d)
    capturer.batch_done()
    return ScanResult(
        reason, len(visited), n, missing, tree.limit_hits - hits_before, time.monotonic() - t0
    )


class Rescanner:
    """Runs one scan at a time; a request during a scan runs another right after it."""

    def __init__(
        self,
        tree: WatchTree,
        capturer: Capturer,
        *,
        on_done: Callable[[ScanResult], None],
        on_start: Callable[[str], None],
    ) -> None:
        self.tree = tree
        self.capturer = capturer
        self.on_done = on_done
        self.on_start = on_start
        self._wanted: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.running = False

    def request(self, reason: str) -> None:
        if self._wanted is None:
            self._wanted = reason
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._wanted is not None:
            reason, self._wanted = self._wanted, None
            self.running = True
            try:
                self.on_start(reason)
                result = await full_scan(self.tree, self.capturer, reason=reason)
            finally:
                self.running = False
            self.on_done(result)

    async def wait_idle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


def jittered(interval_s: float, jitter: float = 0.1) -> float:
    """``interval_s`` ± ``jitter``: nodes restarted together do not rescan in lockstep."""
    return interval_s * (1.0 + random.uniform(-jitter, jitter))
