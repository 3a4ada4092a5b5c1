"""Settings every agent reads from the environment (see DESIGN.md, "Commands and configuration")."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from watcher_common.outbox import DEFAULT_BUDGET_BYTES

DEFAULT_API_SERVER = "http://localhost:3000"
DEFAULT_METRICS_PORT = 9090
DEFAULT_LOG_LEVEL = "INFO"


class ConfigError(ValueError):
    """A setting is malformed; the message names the variable."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    return value


def read_agent_token(env: Mapping[str, str]) -> str | None:
    """``WATCHER_AGENT_TOKEN`` (else the file named by ``WATCHER_AGENT_TOKEN_FILE``).

    Both may hold a comma-separated list (the backend's form); an agent sends the first.
    """
    raw = env.get("WATCHER_AGENT_TOKEN", "")
    if not raw.strip() and env.get("WATCHER_AGENT_TOKEN_FILE", "").strip():
        path = Path(env["WATCHER_AGENT_TOKEN_FILE"].strip())
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"WATCHER_AGENT_TOKEN_FILE: cannot read {path}: {exc}") from None
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    return tokens[0] if tokens else None


@dataclass(frozen=True)
class AgentSettings:
    api_server: str = DEFAULT_API_SERVER
    metrics_port: int = DEFAULT_METRICS_PORT
    node_name: str = ""
    log_level: str = DEFAULT_LOG_LEVEL
    agent_token: str | None = field(default=None, repr=False)  # never in logs or reprs
    outbox_budget_bytes: int = DEFAULT_BUDGET_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentSettings:
        e = os.environ if env is None else env
        api = e.get("API_SERVER", "").strip() or DEFAULT_API_SERVER
        if not api.startswith(("http://", "https://")):
            raise ConfigError(f"API_SERVER must start with http:// or https://, got {api!r}")
        level = (e.get("LOG_LEVEL", "").strip() or DEFAULT_LOG_LEVEL).upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"LOG_LEVEL must be DEBUG/INFO/WARNING/ERROR/CRITICAL, got {level}")
        port = _int(e, "METRICS_PORT", DEFAULT_METRICS_PORT)
        if port > 65535:
            raise ConfigError(f"METRICS_PORT must be <= 65535, got {port}")
        return cls(
            api_server=api.rstrip("/"),
            metrics_port=port,
            node_name=e.get("NODE_NAME", "").strip() or socket.gethostname(),
            log_level=level,
            agent_token=read_agent_token(e),
            outbox_budget_bytes=_int(
                e, "WATCHER_OUTBOX_BUDGET_BYTES", DEFAULT_BUDGET_BYTES, minimum=1
            ),
        )
