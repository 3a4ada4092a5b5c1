"""The plumbing every agent starts the same way: durable outbox, health, batching sender.

filemon and procmon differ in what they capture, not in how events leave the node, so the
wiring lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from watcher_common.agent_config import AgentSettings
from watcher_common.agent_http import Health
from watcher_common.outbox import Outbox
from watcher_common.sender import BATCH_MAX_EVENTS, LINGER_S, Sender


@dataclass(frozen=True)
class AgentRuntime:
    outbox: Outbox
    health: Health
    sender: Sender

    @classmethod
    def open(
        cls,
        service: str,
        settings: AgentSettings,
        outbox_path: str | Path,
        version: str,
        registry: CollectorRegistry,
        *,
        linger_s: float = LINGER_S,
        batch_max_events: int = BATCH_MAX_EVENTS,
    ) -> AgentRuntime:
        """Open the outbox, a Health reporting its depth, and a Sender draining it.
        ``linger_s``: the sender's wait for a burst to fill its batch, ``batch_max_events``:
        the most events per request."""
        outbox = Outbox(outbox_path, budget_bytes=settings.outbox_budget_bytes)
        health = Health(service, info=lambda: {"outbox_events": outbox.stats().events})
        sender = Sender(
            outbox,
            settings.api_server,
            settings.agent_token,
            registry=registry,
            user_agent=f"{service}/{version}",
            linger_s=linger_s,
            batch_max_events=batch_max_events,
        )
        return cls(outbox, health, sender)
