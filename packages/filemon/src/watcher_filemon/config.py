"""filemon's settings: the shared agent settings plus its own, all from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from watcher_common.agent_config import AgentSettings, ConfigError
from watcher_common.identity import IdentityConfig
from watcher_filemon.capture import CaptureSettings
from watcher_filemon.noise import FileFilter

DEFAULT_WATCH_ROOT = "/watcher/codes"
DEFAULT_SNAPSHOT_BASE = "/watcher/snapshots"

# Documented in `watcher-filemon --help`.
ENV_HELP = """\
environment:
  WATCH_ROOT                     workspaces root (/watcher/codes)
  SNAPSHOT_BASE                  durable local state: outbox.db + filemon-state.db
                                 (/watcher/snapshots)
  API_SERVER                     backend base URL (http://localhost:3000)
  METRICS_PORT                   /metrics and /health port (9090)
  NODE_NAME                      node name reported with events (hostname)
  LOG_LEVEL                      DEBUG|INFO|WARNING|ERROR (INFO)
  WATCHER_AGENT_TOKEN[_FILE]     bearer token sent to the backend
  WATCHER_OUTBOX_BUDGET_BYTES    outbox size cap (1 GiB)
  FILEMON_SETTLE_MS              quiet time after a close/rename before reading (200)
  FILEMON_SETTLE_CAP_MS          longest wait from the first event of a burst (2000)
  FILEMON_QUIET_MS               stillness needed for a file written without a close (1000)
  FILEMON_MAX_FILE_BYTES         larger files are recorded as metadata only (1048576)
  FILEMON_EXTENSIONS             comma-separated source extensions (replaces the default)
  FILEMON_FILENAMES              comma-separated exact names (Makefile, Dockerfile, …)
  FILEMON_RECONCILE_INTERVAL_S   periodic full rescan, jittered ±10% (600; 0 = off)
  WATCHER_ASSIGNMENT_PATTERN     assignment directory regex (hw[0-9]+), and the other
                                 WATCHER_*_PATTERN identity settings
"""


def _ms(env: Mapping[str, str], name: str, default_ms: int) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default_ms / 1000.0
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"{name} must be an integer number of milliseconds, got {raw!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return value / 1000.0


def _list(env: Mapping[str, str], name: str) -> list[str] | None:
    raw = env.get(name, "").strip()
    return [x for x in raw.split(",") if x.strip()] if raw else None


@dataclass(frozen=True)
class FilemonConfig:
    watch_root: Path = Path(DEFAULT_WATCH_ROOT)
    snapshot_base: Path = Path(DEFAULT_SNAPSHOT_BASE)
    agent: AgentSettings = field(default_factory=AgentSettings)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    file_filter: FileFilter = field(default_factory=FileFilter)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    reconcile_interval_s: float = 600.0

    @property
    def outbox_path(self) -> Path:
        return self.snapshot_base / "outbox.db"

    @property
    def state_path(self) -> Path:
        return self.snapshot_base / "filemon-state.db"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FilemonConfig:
        e = os.environ if env is None else env
        max_bytes_raw = e.get("FILEMON_MAX_FILE_BYTES", "").strip()
        try:
            max_bytes = int(max_bytes_raw) if max_bytes_raw else 1 << 20
            interval = float(e.get("FILEMON_RECONCILE_INTERVAL_S", "").strip() or 600)
        except ValueError as exc:
            raise ConfigError(f"bad number in filemon settings: {exc}") from None
        capture = CaptureSettings(
            settle_s=_ms(e, "FILEMON_SETTLE_MS", 200),
            settle_cap_s=_ms(e, "FILEMON_SETTLE_CAP_MS", 2000),
            quiet_s=_ms(e, "FILEMON_QUIET_MS", 1000),
            max_file_bytes=max_bytes,
        )
        return cls(
            watch_root=Path(e.get("WATCH_ROOT", "").strip() or DEFAULT_WATCH_ROOT),
            snapshot_base=Path(e.get("SNAPSHOT_BASE", "").strip() or DEFAULT_SNAPSHOT_BASE),
            agent=AgentSettings.from_env(e),
            capture=capture,
            file_filter=FileFilter.from_lists(
                _list(e, "FILEMON_EXTENSIONS"), _list(e, "FILEMON_FILENAMES")
            ),
            identity=IdentityConfig.from_env(e),
            reconcile_interval_s=interval,
        )
