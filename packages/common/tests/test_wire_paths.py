"""``wire.rel_path_ok``: the one path rule of file events, shortcut included."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from watcher_common.wire import FileDelete, rel_path_ok


def _by_definition(value: str) -> bool:
    # relative, no NUL, and no empty, "." or ".." component
    return (
        not value.startswith("/")
        and "\x00" not in value
        and all(p not in ("", ".", "..") for p in value.split("/"))
    )


@given(st.text(alphabet="/.a\x00한", max_size=12))
def test_rel_path_ok_is_the_definition(value: str) -> None:
    assert rel_path_ok(value) == _by_definition(value)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("hw1/test.c", True),
        (".hidden/a.c", True),
        ("a/..b/c", True),
        ("테스트.py", True),
        ("", False),
        ("/abs.c", False),
        ("a//b", False),
        ("a/", False),
        ("./a", False),
        ("a/../b", False),
        ("a\x00b", False),
    ],
)
def test_the_wire_model_uses_it(path: str, ok: bool) -> None:
    fields = {
        "event_id": "test-0000001",
        "agent": "t",
        "agent_version": "0",
        "ts": "2026-03-01T00:00:00Z",
        "class_div": "os-1",
        "student_id": "202012345",
        "assignment": "hw1",
        "path": path,
    }
    assert rel_path_ok(path) == ok
    if ok:
        assert FileDelete.model_validate(fields).path == path
    else:
        with pytest.raises(ValidationError):
            FileDelete.model_validate(fields)
