"""Backend settings, read from environment variables (see docs and DESIGN.md).

Every variable has a documented default except the tokens: with no token configured the
backend still starts, but every protected route answers 401 (secure by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("watcher_backend")

MiB = 1024 * 1024

DEFAULT_DB_URL = "sqlite:///./data/watcher.db"
ROLES = ("agent", "reader", "admin")


class Settings(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=0, le=65535)
    db_url: str = DEFAULT_DB_URL
    agent_tokens: tuple[str, ...] = ()
    reader_tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    log_level: str = "INFO"
    access_log: bool = False
    # request limits: whole request body, one uploaded blob, events in one ingest batch
    max_body_bytes: int = Field(default=16 * MiB, gt=0)
    max_blob_bytes: int = Field(default=32 * MiB, gt=0)
    max_batch_events: int = Field(default=1000, gt=0)
    # group commit: at most this many events in one transaction
    writer_max_batch: int = Field(default=5000, gt=0)
    # instructor UI sessions: HMAC secret (empty → random per process) and lifetime
    session_secret: str = Field(default="", repr=False)
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    # analytics cache warm-up once ingest has been quiet this long (seconds; 0 = off)
    analytics_warm_idle_s: float = Field(default=2.0, ge=0, le=3600)

    @property
    def has_tokens(self) -> bool:
        return bool(self.agent_tokens or self.reader_tokens or self.admin_tokens)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``environ`` (default ``os.environ``); keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        simple = {
            "PORT": "port",
            "DB_URL": "db_url",
            "LOG_LEVEL": "log_level",
            "HOST": "host",
            "WATCHER_MAX_BODY_BYTES": "max_body_bytes",
            "WATCHER_MAX_BLOB_BYTES": "max_blob_bytes",
            "WATCHER_MAX_BATCH_EVENTS": "max_batch_events",
            "WATCHER_WRITER_MAX_BATCH": "writer_max_batch",
            "WATCHER_SESSION_HOURS": "session_hours",
            "WATCHER_ANALYTICS_WARM_IDLE_S": "analytics_warm_idle_s",
        }
        for var, field in simple.items():
            raw = env.get(var, "").strip()
            if raw:
                values[field] = raw
        if env.get("WATCHER_ACCESS_LOG", "").strip().lower() in ("1", "true", "yes", "on"):
            values["access_log"] = True
        for role in ROLES:
            values[f"{role}_tokens"] = read_tokens(env, f"WATCHER_{role.upper()}_TOKEN")
        secret = ",".join(read_tokens(env, "WATCHER_SESSION_SECRET"))
        if secret:
            values["session_secret"] = secret
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


def read_tokens(env: Mapping[str, str], var: str) -> tuple[str, ...]:
    """Tokens from ``VAR`` and the file named by ``VAR_FILE`` (comma or newline separated)."""
    raw = env.get(var, "")
    path = env.get(f"{var}_FILE", "").strip()
    if path:
        try:
            raw += "," + Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            # The path is not a secret; the content is never logged.
            raise ValueError(f"{var}_FILE: cannot read {path}: {exc.strerror}") from exc
    tokens = (t.strip() for t in raw.replace("\n", ",").split(","))
    return tuple(dict.fromkeys(t for t in tokens if t))
