"""A real filemon (real inotify, real files) wired to an in-memory recording sink."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from watcher_common.wire import Event, FileDelete, FileRename, FileSnapshot
from watcher_filemon.agent import Filemon
from watcher_filemon.capture import CaptureSettings
from watcher_filemon.config import FilemonConfig
from watcher_filemon.metrics import FilemonMetrics

WS = "os-1-202012345"  # a student workspace directory


class RecordingSink:
    def __init__(self) -> None:
        self.items: list[tuple[Event, bytes | None]] = []
        self.fail = False

    def put_many(self, items: Sequence[tuple[Event, bytes | None]]) -> None:
        if self.fail:
            raise OSError("sink refused")
        for ev, content in items:
            if isinstance(ev, FileSnapshot) and content is not None:
                import hashlib

                assert hashlib.sha256(content).hexdigest() == ev.sha256
            self.items.append((ev, content))

    def events(self) -> list[Event]:
        return [e for e, _ in self.items]

    def versions(self, path: str) -> list[bytes]:
        """Contents captured for ``path`` (below the assignment), in order."""
        return [
            c
            for e, c in self.items
            if isinstance(e, FileSnapshot) and e.path == path and c is not None
        ]

    def snapshots(self) -> list[FileSnapshot]:
        return [e for e, _ in self.items if isinstance(e, FileSnapshot)]

    def deletes(self) -> list[FileDelete]:
        return [e for e, _ in self.items if isinstance(e, FileDelete)]

    def renames(self) -> list[FileRename]:
        return [e for e, _ in self.items if isinstance(e, FileRename)]


class Harness:
    def __init__(self, tmp: Path, settings: CaptureSettings | None = None) -> None:
        self.root = tmp / "codes"
        self.base = tmp / "snapshots"
        self.root.mkdir(exist_ok=True)
        self.hw = self.root / WS / "hw1"
        self.hw.mkdir(parents=True, exist_ok=True)
        self.sink = RecordingSink()
        self.settings = settings or CaptureSettings()
        self.fm: Filemon | None = None
        self.registry = CollectorRegistry()

    def config(self) -> FilemonConfig:
        return FilemonConfig(
            watch_root=self.root,
            snapshot_base=self.base,
            capture=self.settings,
            reconcile_interval_s=0,
        )

    async def start(self) -> Filemon:
        self.registry = CollectorRegistry()
        fm = Filemon(self.config(), self.sink, metrics=FilemonMetrics(self.registry))
        self.fm = fm
        await fm.start()
        return fm

    async def stop(self) -> None:
        if self.fm is not None:
            await self.fm.stop()
            self.fm = None

    def metric(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v

    async def idle(self, min_wait: float = 0.0, within_s: float = 20.0) -> None:
        """Wait until nothing is pending (twice in a row) and no scan is running."""
        assert self.fm is not None
        await asyncio.sleep(min_wait)
        deadline = time.monotonic() + within_s
        quiet = 0
        while quiet < 3:
            if time.monotonic() > deadline:
                raise AssertionError(f"not idle: {self.fm.capturer.pending_count} pending")
            await asyncio.sleep(0.1)
            busy = self.fm.capturer.pending_count or self.fm.rescanner.running
            quiet = 0 if busy else quiet + 1

    async def wait_for(self, pred: Callable[[], bool], within_s: float = 10.0) -> None:
        deadline = time.monotonic() + within_s
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.02)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()
