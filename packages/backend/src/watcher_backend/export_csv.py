"""Gradebook CSV (role reader): one row per student × assignment with the analytics figures.

Unlike the ProgSnap2 export this is *for the instructor* and names students by their id.
Times are Korea time (``YYYY-MM-DD HH:MM:SS``, the gradebook's local time); UTF-8 with a
BOM so that spreadsheet programs open Korean text correctly.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from sqlalchemy import select

from watcher_backend import lookup
from watcher_backend.analytics_figures import ParamsDep, StudentFigures, assignment_figures
from watcher_backend.db.tables import ASSIGNMENTS
from watcher_common.timeutil import KST

router = APIRouter()

COLUMNS = (
    "class_div",
    "assignment",
    "student_id",
    "started",
    "saves",
    "builds",
    "build_success_rate",
    "runs",
    "crashes",
    "cells",
    "time_on_task_min",
    "error_quotient",
    "repeated_error_density",
    "first_activity_kst",
    "last_activity_kst",
    "flags",
)


def _num(v: float | None, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def csv_row(class_div: str, hw: str, f: StudentFigures) -> list[str]:
    def kst(d: datetime | None) -> str:
        return d.astimezone(KST).strftime("%Y-%m-%d %H:%M:%S") if d is not None else ""

    return [
        class_div,
        hw,
        f.student_id,
        "yes" if f.started else "no",
        str(f.saves),
        str(f.builds),
        _num(f.build_success_rate),
        str(f.runs),
        str(f.crashes),
        str(f.cells),
        _num(f.time_on_task_s / 60, 1),
        _num(f.error_quotient),
        _num(f.repeated_error_density),
        kst(f.first_activity),
        kst(f.last_activity),
        ";".join(f.flags),
    ]


@router.get(
    "/export/students.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def students_csv(
    request: Request,
    class_div: str,
    p: ParamsDep,
    assignment: Annotated[str | None, Query(description="one assignment (default all)")] = None,
) -> Response:
    with request.app.state.engine.connect() as conn:
        cls = lookup.class_id(conn, class_div)
        if cls is None:
            raise HTTPException(404, f"unknown class {class_div!r}")
        stmt = select(ASSIGNMENTS.c.id, ASSIGNMENTS.c.name).where(ASSIGNMENTS.c.class_id == cls)
        if assignment is not None:
            stmt = stmt.where(ASSIGNMENTS.c.name == assignment)
        asgs = conn.execute(stmt.order_by(ASSIGNMENTS.c.name)).all()
        if assignment is not None and not asgs:
            raise HTTPException(404, f"unknown assignment {assignment!r}")
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow(COLUMNS)
        for asg_id, name in asgs:
            rows, _ = assignment_figures(conn, cls, int(asg_id), p)
            out.writerows(csv_row(class_div, str(name), f) for f in rows)
    name = f"{class_div}-{assignment}" if assignment else class_div
    return Response(
        content="\ufeff" + buf.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_safe(name)}-students.csv"'},
    )


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
