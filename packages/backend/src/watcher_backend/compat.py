"""The old JCode-Watcher HTTP API (see mission/reference-api.md), served unchanged in shape.

Split by concern: ``compat_write`` (3 POSTs from old agents, role agent), ``compat_read``
(per-student reads, role reader), ``compat_aggregates`` (class-wide figures, in SQL).

Route order matters: Starlette takes the first matching route, and the generic
``/api/{class_div}/{hw}/{student}[/{filename}]`` patterns would swallow the fixed-prefix
paths (``/api/assignment/os-1/hw1`` has the same shape as ``/api/{c}/{hw}/{student}``).
So: the writes (POST only, see below), fixed prefixes, then ``.../logs/*``, then the
generic reads.
app.py includes the v1 routers before this one for the same reason.
"""

from __future__ import annotations

from fastapi import APIRouter

from watcher_backend import compat_aggregates, compat_read, compat_write

router = APIRouter()
# The writes first: they are the hot path (old agents POST every save) and FastAPI tries
# routes in order, ~10 µs each. Safe because only POST routes can fully match a POST and
# the only POST routes are compat_write's (whose own order puts logs/* first).
router.include_router(compat_write.router)
router.include_router(compat_aggregates.router)
router.include_router(compat_read.fixed_router)
router.include_router(compat_read.logs_router)
router.include_router(compat_read.generic_router)
