"""Recursive inotify on WATCH_ROOT: one watch per directory, events as paths.

The tree owns the inotify fd and the wd ↔ directory map and turns raw inotify events into
calls on a ``TreeListener`` with paths relative to WATCH_ROOT. It knows nothing about
students or versions: deciding what a file event means is the capture layer's job.

Rules that make it lossless:
- a new directory is watched first and listed second, and every file already inside is
  reported as ``found`` (``mkdir -p a/b/c && echo x > a/b/c/f.c`` may finish before the
  watch on ``c`` exists);
- symlinks are never followed (``IN_DONT_FOLLOW``, ``DirEntry.is_dir(follow_symlinks=False)``);
- noise directories (``.git``, ``node_modules``, virtualenvs, …) are never watched;
- running out of watches (ENOSPC) is reported, never ignored: the caller marks health
  degraded instead of silently watching part of the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from inotify_simple import INotify  # type: ignore[import-untyped]
from inotify_simple import flags as F

from watcher_filemon.noise import VENV_MARKER, is_noise_dir, is_venv

log = logging.getLogger(__name__)

# MODIFY only serves the "written without a close" rule (long-lived writers); ATTRIB is not
# needed: mmap writes raise no inotify event at all, and metadata alone is not a version.
WATCH_MASK = (
    F.CREATE
    | F.CLOSE_WRITE
    | F.MODIFY
    | F.MOVED_FROM
    | F.MOVED_TO
    | F.DELETE
    | F.DELETE_SELF
    | F.MOVE_SELF
    | F.ONLYDIR
    | F.DONT_FOLLOW
    | F.EXCL_UNLINK
)

FileEventKind = Literal["closed", "modified", "created", "gone", "moved_in", "found"]


class TreeListener(Protocol):
    def file_event(self, rel: str, kind: FileEventKind) -> None: ...
    def file_moved(self, old: str, new: str) -> None: ...
    def dir_moved(self, old: str, new: str) -> None: ...
    def dir_gone(self, rel: str) -> None: ...
    def overflow(self) -> None: ...
    def batch_done(self) -> None: ...


class WatchLimitError(OSError):
    """inotify_init failed because max_user_instances is exhausted."""


@dataclass(frozen=True, slots=True)
class InotifyLimits:
    max_user_watches: int | None
    max_user_instances: int | None
    max_queued_events: int | None


def read_limits(proc: str = "/proc/sys/fs/inotify") -> InotifyLimits:
    def one(name: str) -> int | None:
        try:
            with open(os.path.join(proc, name)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    return InotifyLimits(
        one("max_user_watches"), one("max_user_instances"), one("max_queued_events")
    )


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


@dataclass(slots=True)
class _Limbo:
    """A directory moved away whose MOVED_TO has not been seen yet."""

    rel: str
    watches: dict[str, int]  # suffix below rel ("" for rel itself) → wd
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _FileMove:
    rel: str
    at: float = field(default_factory=time.monotonic)


class WatchTree:
    def __init__(
        self,
        root: str,
        listener: TreeListener,
        *,
        dir_filter: Callable[[str], bool] | None = None,
        on_watch_limit: Callable[[str], None] | None = None,
        move_window_s: float = 0.5,
    ) -> None:
        self.root = os.path.abspath(root)
        self.listener = listener
        # dir_filter(rel) → False: do not watch or descend (e.g. not a workspace directory).
        self.dir_filter = dir_filter or (lambda rel: True)
        self.on_watch_limit = on_watch_limit or (lambda rel: None)
        self.move_window_s = move_window_s
        self._wd_path: dict[int, str] = {}
        self._path_wd: dict[str, int] = {}
        self._limbo: dict[int, _Limbo] = {}  # cookie → moved-away directory
        self._file_moves: dict[int, _FileMove] = {}  # cookie → moved-away file
        self.limit_hits = 0  # ENOSPC count since the last reset_limit_hits()
        self._ino: INotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ------------------------------------------------------------------

    def open(self) -> None:
        try:
            self._ino = INotify(nonblocking=True)
        except OSError as exc:
            if exc.errno == errno.EMFILE:
                raise WatchLimitError(
                    exc.errno,
                    "inotify instance limit reached (raise fs.inotify.max_user_instances)",
                ) from exc
            raise

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._ino is not None
        self._loop = loop
        loop.add_reader(self._ino.fileno(), self.read_events)

    def close(self) -> None:
        if self._ino is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._ino.fileno())
            self._loop = None
        self._ino.close()
        self._ino = None
        self._wd_path.clear()
        self._path_wd.clear()

    @property
    def watch_count(self) -> int:
        return len(self._wd_path)

    def watched_dirs(self) -> list[str]:
        return list(self._path_wd)

    def abspath(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    # ---- watching -------------------------------------------------------------------

    def watchable(self, rel: str, name: str) -> bool:
        if is_noise_dir(name) or not self.dir_filter(rel):
            return False
        return not is_venv(self.abspath(rel))

    def _add_watch(self, rel: str) -> bool:
        assert self._ino is not None
        try:
            wd = self._ino.add_watch(self.abspath(rel), WATCH_MASK)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self.limit_hits += 1
                self.on_watch_limit(rel)
            elif exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                log.warning("cannot watch a directory: %s", exc.strerror)
            return False
        old = self._wd_path.get(wd)
        if old is not None and old != rel:
            # Same inode reached under a new name (a move we did not see): re-key it.
            self._path_wd.pop(old, None)
        prev = self._path_wd.get(rel)
        if prev is not None and prev != wd:
            self._wd_path.pop(prev, None)
        self._wd_path[wd] = rel
        self._path_wd[rel] = wd
        return True

    def walk(
        self, rel: str = "", visited: set[str] | None = None
    ) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """Watch ``rel`` and every watchable directory below it, yielding the non-directories.

        Each directory is watched *before* it is listed, so a file created meanwhile is
        either listed here or reported by the new watch (or both: consumers dedup).
        Symlinks come out as non-directories and are never followed; ``visited`` collects
        the directories watched.
        """
        queue = [rel]
        while queue:
            d = queue.pop()
            if not self._add_watch(d):
                continue
            if visited is not None:
                visited.add(d)
            try:
                with os.scandir(self.abspath(d)) as it:
                    entries = list(it)
            except OSError:
                continue
            if d and any(e.name == VENV_MARKER for e in entries):
                self._drop_subtree(d, remove=True)
                continue
            for e in entries:
                child = join(d, e.name)
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if self.watchable(child, e.name):
                        queue.append(child)
                else:
                    yield child, e

    def add_subtree(self, rel: str) -> int:
        """A directory appeared (created or moved in): watch it all, report its files."""
        n = 0
        for child, _ in self.walk(rel):
            self.listener.file_event(child, "found")
            n += 1
        return n

    def _drop_subtree(self, rel: str, *, remove: bool) -> dict[str, int]:
        """Forget the watches at/below ``rel``; ``remove`` also rm_watch()es them."""
        dropped: dict[str, int] = {}
        for p in [p for p in self._path_wd if _under(p, rel)]:
            wd = self._path_wd.pop(p)
            self._wd_path.pop(wd, None)
            dropped[p[len(rel) :].lstrip("/") if rel else p] = wd
            if remove and self._ino is not None:
                with contextlib.suppress(OSError):
                    self._ino.rm_watch(wd)
        return dropped

    def forget(self, rel: str) -> None:
        """Stop watching one directory that no longer exists under this name."""
        wd = self._path_wd.pop(rel, None)
        if wd is None:
            return
        self._wd_path.pop(wd, None)
        if self._ino is not None:
            with contextlib.suppress(OSError):
                self._ino.rm_watch(wd)

    # ---- events ---------------------------------------------------------------------

    def read_events(self) -> None:
        if self._ino is None:
            return
        try:
            events = self._ino.read(timeout=0)
        except BlockingIOError:
            return
        for ev in events:
            self._handle(ev.wd, ev.mask, ev.cookie, ev.name)
        self.listener.batch_done()

    def _handle(self, wd: int, mask: int, cookie: int, name: str) -> None:
        if mask & F.Q_OVERFLOW:
            self.listener.overflow()
            return
        if mask & F.IGNORED:
            rel = self._wd_path.pop(wd, None)
            if rel is not None and self._path_wd.get(rel) == wd:
                del self._path_wd[rel]
            return
        d = self._wd_path.get(wd)
        if d is None:
            return
        if mask & (F.DELETE_SELF | F.MOVE_SELF):
            if d == "":
                log.error("the watch root itself was deleted or moved: %s", self.root)
                self.listener.overflow()  # a rescan re-establishes what it can
            return  # any other directory: its parent's DELETE/MOVED_FROM says it all
        rel = join(d, name)
        if mask & F.ISDIR:
            self._dir_event(rel, name, mask, cookie)
            return
        if name == VENV_MARKER and mask & (F.CREATE | F.MOVED_TO) and d:
            self._drop_subtree(d, remove=True)  # it is a virtualenv after all
            return
        if mask & F.CLOSE_WRITE:
            self.listener.file_event(rel, "closed")
        elif mask & F.MODIFY:
            self.listener.file_event(rel, "modified")
        elif mask & F.CREATE:
            self.listener.file_event(rel, "created")
        elif mask & F.DELETE:
            self.listener.file_event(rel, "gone")
        elif mask & F.MOVED_FROM:
            self._file_moves[cookie] = _FileMove(rel)
            self.listener.file_event(rel, "gone")
        elif mask & F.MOVED_TO:
            src = self._file_moves.pop(cookie, None)
            if src is not None:
                self.listener.file_moved(src.rel, rel)
            else:
                self.listener.file_event(rel, "moved_in")

    def _dir_event(self, rel: str, name: str, mask: int, cookie: int) -> None:
        if mask & F.CREATE:
            if self.watchable(rel, name):
                self.add_subtree(rel)
        elif mask & F.MOVED_FROM:
            watches = self._drop_subtree(rel, remove=False)
            self._limbo[cookie] = _Limbo(rel, watches)
        elif mask & F.MOVED_TO:
            limbo = self._limbo.pop(cookie, None)
            if limbo is None:
                if self.watchable(rel, name):
                    self.add_subtree(rel)
                return
            if not self.watchable(rel, name):
                self._forget_limbo(limbo)
                self.listener.dir_gone(limbo.rel)
                return
            for suffix, wd in limbo.watches.items():
                p = join(rel, suffix) if suffix else rel
                self._wd_path[wd] = p
                self._path_wd[p] = wd
            self.listener.dir_moved(limbo.rel, rel)
            # Files not captured yet under the old name have no state to move: list them.
            self.add_subtree(rel)
        elif mask & F.DELETE:
            self._drop_subtree(rel, remove=False)
            self.listener.dir_gone(rel)

    def _forget_limbo(self, limbo: _Limbo) -> None:
        if self._ino is None:
            return
        for wd in limbo.watches.values():
            with contextlib.suppress(OSError):
                self._ino.rm_watch(wd)

    def expire_moves(self, now: float | None = None) -> None:
        """Moves whose other half never came: the directory left the tree."""
        now = time.monotonic() if now is None else now
        for cookie, limbo in list(self._limbo.items()):
            if now - limbo.at >= self.move_window_s:
                del self._limbo[cookie]
                self._forget_limbo(limbo)
                self.listener.dir_gone(limbo.rel)
        for cookie, mv in list(self._file_moves.items()):
            if now - mv.at >= self.move_window_s:
                del self._file_moves[cookie]
