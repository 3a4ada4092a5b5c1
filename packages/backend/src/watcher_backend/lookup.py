"""Resolve the old API's string identity (class_div, hw, student id) to integer keys.

Shared by the compat and query routers. Every function answers ``None`` for an unknown
name instead of raising: the old API answers unknown identities with empty results.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, select

from watcher_backend.db.models import AssignmentRow, ClassRow, StudentRow


@dataclass(frozen=True)
class StudentScope:
    """One student's work in one assignment (the unit most old-API reads are about)."""

    class_id: int
    assignment_id: int
    student_pk: int


def class_id(conn: Connection, class_div: str) -> int | None:
    return conn.execute(select(ClassRow.id).where(ClassRow.class_div == class_div)).scalar()


def assignment_id(conn: Connection, cls: int, name: str) -> int | None:
    return conn.execute(
        select(AssignmentRow.id).where(AssignmentRow.class_id == cls, AssignmentRow.name == name)
    ).scalar()


def student_pk(conn: Connection, cls: int, student_id: str) -> int | None:
    return conn.execute(
        select(StudentRow.id).where(StudentRow.class_id == cls, StudentRow.student_id == student_id)
    ).scalar()


def class_assignment(conn: Connection, class_div: str, hw: str) -> tuple[int, int] | None:
    """(class_id, assignment_id), or None when either is unknown."""
    cls = class_id(conn, class_div)
    if cls is None:
        return None
    asg = assignment_id(conn, cls, hw)
    return None if asg is None else (cls, asg)


def student_scope(
    conn: Connection, class_div: str, hw: str, student_id: str
) -> StudentScope | None:
    found = class_assignment(conn, class_div, hw)
    if found is None:
        return None
    cls, asg = found
    spk = student_pk(conn, cls, student_id)
    return None if spk is None else StudentScope(cls, asg, spk)
