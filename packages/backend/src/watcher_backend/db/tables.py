"""Core ``Table`` objects of the ORM models, for fast SQLAlchemy Core statements."""

from __future__ import annotations

from sqlalchemy import Table

from .models import Base

_t = Base.metadata.tables

CLASSES: Table = _t["classes"]
STUDENTS: Table = _t["students"]
ASSIGNMENTS: Table = _t["assignments"]
FILES: Table = _t["files"]
BLOBS: Table = _t["blobs"]
EVENTS: Table = _t["events"]
SNAPSHOTS: Table = _t["snapshots"]
FILE_EVENTS: Table = _t["file_events"]
RUNS: Table = _t["runs"]
RUN_SOURCES: Table = _t["run_sources"]
NOTEBOOK_CELLS: Table = _t["notebook_cells"]
