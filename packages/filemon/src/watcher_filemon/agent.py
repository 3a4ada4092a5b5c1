"""The filemon agent: watch tree + capturer + scans, wired to a sink (the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from importlib.metadata import PackageNotFoundError, version

from watcher_common.identity import (
    StudentPath,
    Workspace,
    parse_workspace_dir,
    parse_workspace_path,
)
from watcher_filemon.capture import Capturer, HealthLike, Sink
from watcher_filemon.cells import CellTailer
from watcher_filemon.config import FilemonConfig
from watcher_filemon.metrics import FilemonMetrics
from watcher_filemon.scan import Rescanner, ScanResult, jittered
from watcher_filemon.state import StateDB
from watcher_filemon.watch_tree import WatchTree, read_limits

log = logging.getLogger("watcher_filemon")

WATCH_LIMIT_RETRY_S = 60.0
HOUSEKEEPING_S = 0.25


def agent_version() -> str:
    try:
        return version("watcher-filemon")
    except PackageNotFoundError:
        return "0"


class Filemon:
    def __init__(
        self,
        cfg: FilemonConfig,
        sink: Sink,
        *,
        metrics: FilemonMetrics | None = None,
        health: HealthLike | None = None,
    ) -> None:
        self.cfg = cfg
        self.root = str(cfg.watch_root)
        self.metrics = metrics or FilemonMetrics()
        self.health = health
        self.state = StateDB(cfg.state_path)
        # Notebook cell logs share the state db and the sink, not the version logic.
        self.cells = CellTailer(
            self.root,
            self.state,
            sink,
            node=cfg.agent.node_name,
            agent_version=agent_version(),
            identity=cfg.identity,
            metrics=self.metrics,
            retry_s=cfg.capture.retry_after_full_s,
        )
        self.capturer = Capturer(
            self.root,
            self.state,
            sink,
            node=cfg.agent.node_name,
            agent_version=agent_version(),
            file_filter=cfg.file_filter,
            identity=cfg.identity,
            settings=cfg.capture,
            metrics=self.metrics,
            health=health,
            on_overflow=self._on_overflow,
            side=self.cells,
        )
        self.tree = WatchTree(
            self.root,
            self.capturer,
            dir_filter=self._dir_filter,
            on_watch_limit=self._on_watch_limit,
        )
        self.rescanner = Rescanner(
            self.tree, self.capturer, on_start=self._scan_started, on_done=self._scan_done
        )
        self.overflows = 0
        self.scans: list[ScanResult] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._limit_detail_logged = False

    # ---- which directories are worth a watch ---------------------------------------

    def _dir_filter(self, rel: str) -> bool:
        """Only workspace directories and assignment directories (and all below them)."""
        depth = rel.count("/") + 1
        if depth == 1:
            return isinstance(parse_workspace_dir(rel, self.cfg.identity), Workspace)
        if depth == 2:
            return isinstance(parse_workspace_path(rel, self.cfg.identity), StudentPath)
        return True

    # ---- lifecycle ------------------------------------------------------------------

    def _check_root(self) -> None:
        if not os.path.isdir(self.root):
            raise FileNotFoundError(
                f"WATCH_ROOT {self.root} is not a directory (is the volume mounted?)"
            )

    async def start(self) -> ScanResult:
        self._check_root()
        limits = read_limits()
        log.info(
            "filemon starting: root %s, inotify max_user_watches=%s max_user_instances=%s"
            " max_queued_events=%s, %d paths in local state",
            self.root,
            limits.max_user_watches,
            limits.max_user_instances,
            limits.max_queued_events,
            len(self.state),
        )
        loop = asyncio.get_running_loop()
        self.tree.open()
        self.tree.attach(loop)
        self.capturer.attach(loop)
        self.cells.attach(loop)
        self.rescanner.request("startup")
        await self.rescanner.wait_idle()
        result = self.scans[-1]
        log.info("watching %d directories under %s", self.tree.watch_count, self.root)
        if limits.max_user_watches and self.tree.watch_count > 0.9 * limits.max_user_watches:
            log.warning(
                "using %d of %d inotify watches: raise fs.inotify.max_user_watches",
                self.tree.watch_count,
                limits.max_user_watches,
            )
        self._tasks.append(loop.create_task(self._housekeeping()))
        if self.cfg.reconcile_interval_s > 0:
            self._tasks.append(loop.create_task(self._periodic()))
        log.info("filemon ready")
        return result

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self.rescanner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.rescanner.wait_idle()
        self.tree.close()
        drained = self.capturer.drain()
        self.capturer.detach()
        self.cells.drain()
        self.cells.detach()
        self.state.close()
        log.info("filemon stopped (%d pending paths captured at shutdown)", drained)

    # ---- background -----------------------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            self.tree.expire_moves()
            self.capturer.batch_done()
            self.metrics.watches.set(self.tree.watch_count)

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(jittered(self.cfg.reconcile_interval_s))
            self.rescanner.request("periodic")

    async def _retry_watch_limit(self) -> None:
        await asyncio.sleep(WATCH_LIMIT_RETRY_S)
        self.rescanner.request("watch_limit")

    # ---- callbacks ------------------------------------------------------------------

    def _on_overflow(self) -> None:
        self.overflows += 1
        self.metrics.overflows.inc()
        log.warning("inotify queue overflow: events were lost, rescanning the tree")
        self.rescanner.request("overflow")

    def _on_watch_limit(self, rel: str) -> None:
        if self.health is not None:
            self.health.set_degraded(
                "watch_limit",
                f"inotify watch limit reached with {self.tree.watch_count} watches: part of"
                " the tree is not watched; raise fs.inotify.max_user_watches",
            )
        if not self._limit_detail_logged:
            self._limit_detail_logged = True
            log.error("inotify watch limit reached (ENOSPC): not every directory is watched")

    def _scan_started(self, reason: str) -> None:
        self.metrics.rescans.labels(reason=reason).inc()

    def _scan_done(self, result: ScanResult) -> None:
        self.scans.append(result)
        self.metrics.watches.set(self.tree.watch_count)
        log.info(
            "%s scan: %d directories, %d files, %d missing, %.2fs",
            result.reason,
            result.dirs,
            result.files,
            result.missing,
            result.seconds,
        )
        if result.limit_hits:
            loop = asyncio.get_running_loop()
            self._tasks.append(loop.create_task(self._retry_watch_limit()))
        elif self.health is not None:
            self.health.clear("watch_limit")
            self._limit_detail_logged = False
