"""Keep Python's cyclic garbage collector off a long-running process's start-up heap.

After start-up a process holds tens of thousands of long-lived container objects (its
modules, pydantic and httpx, for the backend FastAPI and SQLAlchemy). Every full collection
walks all of them: ~60-80 ms of CPU for the agents' ~50k objects on the target VM, paid by
whatever build or ingest is running then; the backend measured 6-8 % of its CPU in GC under
batched ingest. ``gc.freeze`` moves the start-up heap out of the collector's view for good;
a higher first threshold collects less often (objects are freed by reference counting
anyway, and cycles are still collected).
"""

from __future__ import annotations

import gc

AGENT_GEN0_THRESHOLD = 10_000  # an agent allocates far less per second than the backend


def quiet_gc(gen0_threshold: int) -> None:
    """Collect once, freeze what survives, and raise the first generation's threshold.
    Call it once, when start-up is done (in the process's entry point: freezing is
    process-wide)."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
