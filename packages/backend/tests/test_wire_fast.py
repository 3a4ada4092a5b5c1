"""The msgspec mirrors (wire_fast) never accept what the pydantic wire models reject, and
read what they accept to the same values; the common events do take the fast path."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from watcher_backend import wire_fast
from watcher_backend.ingest import parse_batch
from watcher_backend.store import prepare_event
from watcher_common.timeutil import to_us
from watcher_common.wire import MAX_INLINE_CONTENT, Event, dump_event, parse_event, rel_path_ok

CONTENT = b"int main(void) { return 0; }\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


def snapshot(**kw: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "file.snapshot",
        "event_id": "0123456789abcdef",
        "agent": "filemon",
        "agent_version": "1.0",
        "node": "node-1",
        "ts": "2026-03-02T09:00:00.123456Z",
        "class_div": "os-1",
        "student_id": "202012345",
        "assignment": "hw1",
        "path": "src/main.c",
        "size": len(CONTENT),
        "sha256": SHA,
        "content_b64": base64.b64encode(CONTENT).decode(),
    }
    ev.update(kw)
    return ev


def delete(**kw: Any) -> dict[str, Any]:
    ev = snapshot(kind="file.delete")
    for k in ("size", "sha256", "content_b64"):
        del ev[k]
    ev.update(kw)
    return ev


def rename(**kw: Any) -> dict[str, Any]:
    ev = delete(kind="file.rename", old_path="src/old.c")
    ev.update(kw)
    return ev


_DROP = object()

# Valid events the fast path must take (values compared with pydantic's).
ACCEPTED: list[dict[str, Any]] = [
    snapshot(),
    snapshot(content_b64=None),
    snapshot(content_b64=""),
    snapshot(sha256=None, content_b64=None, too_large=True, size=10**9),
    snapshot(ts="2026-03-02T09:00:00+09:00", mtime="2026-03-01T00:00:00Z"),
    snapshot(ts="2026-03-02T09:00:00.5-03:30", reconciled=True, source="procmon"),
    snapshot(path="a/b/c d/é.py", student_id="x", class_div="abc", node=""),
    snapshot(event_id="A-Za-z0_9.:-" + "x" * 116),
    delete(),
    delete(reconciled=True),
    rename(),
    rename(sha256=SHA, size=0),
    rename(sha256=None, size=None),
]

# Each is a (kind, field, value) away from a valid event; _DROP removes the field.
MUTATIONS: list[tuple[str, Any]] = [
    ("event_id", "short"),
    ("event_id", "x" * 129),
    ("event_id", "has space1"),
    ("event_id", "0123456789abcdef\n"),
    ("event_id", "0123456789abcdé"),
    ("event_id", 12345678),
    ("event_id", _DROP),
    ("agent", "a" * 65),
    ("agent", None),
    ("agent", _DROP),
    ("agent_version", "v" * 65),
    ("node", "n" * 254),
    ("node", None),
    ("ts", "2026-03-02T09:00:00"),
    ("ts", "2026-03-02"),
    ("ts", "2026-03-02T09:00:00.1234567Z"),
    ("ts", "2026-03-02T09:00:00.9999999+09:00"),
    ("mtime", "2026-03-02T09:00:00.12345678Z"),
    ("ts", "2026-03-02 09:00:00Z"),
    ("ts", "2026-03-02t09:00:00z"),
    ("ts", "2026-03-02T09:00Z"),
    ("ts", "2026-03-02T09:00:00+0900"),
    ("ts", "2026-03-02T24:00:00Z"),
    ("ts", "2026-02-30T09:00:00Z"),
    ("ts", "2026-03-02T23:59:60Z"),
    ("ts", 1772442000),
    ("ts", 1772442000.5),
    ("ts", "1772442000"),
    ("ts", None),
    ("class_div", "ab"),
    ("class_div", "c" * 129),
    ("student_id", ""),
    ("student_id", "s" * 65),
    ("student_id", 202012345),
    ("assignment", ""),
    ("assignment", "a" * 129),
    ("path", ""),
    ("path", "/abs.c"),
    ("path", "a//b.c"),
    ("path", "a/./b.c"),
    ("path", "a/../b.c"),
    ("path", "a/"),
    ("path", "nul\x00.c"),
    ("path", "p" * 4097),
    ("path", "\ud800.c"),
    ("path", "."),
    ("path", ".."),
    ("path", "./a.c"),
    ("path", "../a.c"),
    ("path", "a/."),
    ("path", "a/.."),
    ("path", "a/.hidden/b.c"),
    ("path", ".gitignore"),
    ("path", "a/..b/c.c"),
    ("path", "a/b../c"),
    ("path", "a/"),
    ("path", "/"),
    ("path", "a\\b.c"),
    ("size", -1),
    ("size", 1.0),
    ("size", 1.5),
    ("size", "29"),
    ("size", True),
    ("size", 2**64),
    ("size", None),
    ("sha256", SHA.upper()),
    ("sha256", SHA + "\n"),
    ("sha256", SHA[:-1]),
    ("sha256", ""),
    ("sha256", SHA[:-1] + "g"),
    ("sha256", SHA[:-1] + "\n"),
    ("sha256", "é" * 64),
    ("event_id", "0123456789abcde/"),
    ("event_id", "0123456789abcde\n"),
    ("event_id", "\n0123456789abcde"),
    ("event_id", "0123456789abcde!"),
    ("event_id", "0123456789ABC_.:-"),
    ("ts", "2026-03-02T09:00:00,123456Z"),
    ("content_b64", "QQ"),
    ("content_b64", "QQ="),
    ("content_b64", "QR=="),
    ("content_b64", "QUJD\n"),
    ("content_b64", " QUJD"),
    ("content_b64", "QUJD="),
    ("content_b64", "QQ==QQ=="),
    ("content_b64", "-_-_"),
    ("content_b64", "QUJ*"),
    ("content_b64", 12),
    ("content_b64", base64.b64encode(b"x" * (MAX_INLINE_CONTENT + 6)).decode()),
    ("content_b64", base64.b64encode(b"x" * (MAX_INLINE_CONTENT + 7)).decode()),
    ("too_large", "true"),
    ("too_large", 1),
    ("too_large", None),
    ("reconciled", 0),
    ("source", "other"),
    ("source", None),
    ("mtime", "2026-03-02T09:00:00"),
    ("mtime", None),
    ("extra", 1),
    ("kind", "file.unknown"),
    ("kind", None),
    ("kind", _DROP),
]


def _mutated(make: Any, field: str, value: Any) -> dict[str, Any]:
    ev = dict(make())
    if value is _DROP:
        ev.pop(field, None)
    else:
        ev[field] = value
    return ev


CASES = (
    ACCEPTED
    + [_mutated(snapshot, f, v) for f, v in MUTATIONS]
    + [_mutated(delete, f, v) for f, v in MUTATIONS if f not in ("size", "sha256")]
    + [_mutated(rename, f, v) for f, v in MUTATIONS]
    + [_mutated(rename, "old_path", v) for f, v in MUTATIONS if f == "path"]
)


def _body(events: list[Any]) -> bytes:
    return json.dumps({"events": events}).encode()


def _pydantic(ev: Any) -> Event | None:
    try:
        return parse_event(json.loads(json.dumps(ev)))
    except ValidationError:
        return None


def _same(fast: Any, slow: Any) -> None:
    assert fast.kind == slow.kind
    for name in type(fast).__struct_fields__:
        a, b = getattr(fast, name), getattr(slow, "content_b64" if name == "content" else name)
        if name == "content":
            b = None if b is None else base64.b64decode(b)
        elif name in ("ts", "mtime") and a is not None:
            a, b = to_us(a), to_us(b)
        assert a == b and type(a) is type(b), (name, a, b)


@pytest.mark.parametrize("ev", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_fast_accepts_only_what_pydantic_accepts_with_equal_values(ev: dict[str, Any]) -> None:
    slow = _pydantic(ev)
    fast = wire_fast.decode_batch(_body([ev]))
    if fast is not None:
        assert slow is not None, "fast path accepted an event pydantic rejects"
        _same(fast[0], slow)


# Batches checked as a whole (wire_fast._fields_ok): one bad event anywhere in a batch of
# good ones sends the whole batch to pydantic.
BAD_IN_BATCH = [
    ev for ev in CASES if _pydantic(ev) is None and wire_fast.decode_batch(_body([ev])) is None
]


@pytest.mark.parametrize("position", [0, 1, 3])
def test_one_bad_event_in_a_batch_falls_back(position: int) -> None:
    good = [snapshot(event_id=f"good-{i:08d}") for i in range(3)] + [rename(), delete()]
    assert wire_fast.decode_batch(_body(good)) is not None
    for bad in BAD_IN_BATCH:
        batch = [*good[:position], bad, *good[position:]]
        assert wire_fast.decode_batch(_body(batch)) is None, bad


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="a./\x00", max_size=8), max_size=6))
def test_paths_checked_together_as_each_alone(paths: list[str]) -> None:
    assert wire_fast.paths_ok(paths) == all(rel_path_ok(p) for p in paths)


def test_common_events_take_the_fast_path() -> None:
    fast = wire_fast.decode_batch(_body(ACCEPTED))
    assert fast is not None
    assert [e.kind for e in fast] == [e["kind"] for e in ACCEPTED]
    for ev, f in zip(ACCEPTED, fast, strict=True):
        slow = _pydantic(ev)
        assert slow is not None
        _same(f, slow)


def test_events_as_the_agents_send_them_take_the_fast_path() -> None:
    # the agents serialise with dump_event: "kind" comes after the common fields
    events = [dump_event(e) for e in (_pydantic(ev) for ev in ACCEPTED) if e is not None]
    assert len(events) == len(ACCEPTED) and next(iter(events[0])) != "kind"
    fast = wire_fast.decode_batch(_body(events))
    assert fast is not None
    for ev, f in zip(events, fast, strict=True):
        slow = _pydantic(ev)
        assert slow is not None
        _same(f, slow)


def test_duplicate_keys_read_like_pydantic() -> None:
    raw = _body([snapshot()]).replace(b'"node": "node-1"', b'"node": "a", "node": "b"')
    fast = wire_fast.decode_batch(raw)
    slow = parse_batch(raw, 10).valid
    if fast is not None:
        assert fast[0].node == slow[0].event.node


def test_escaped_time_digits_fall_back() -> None:
    # msgspec would round 7 fractional digits (pydantic truncates); escapes could hide them
    raw = _body([snapshot(ts="2026-03-02T09:00:00.1234567Z")])
    for old, new in ((b".1234567", b"\\u002e1234567"), (b".1234567", b".123456\\u0037")):
        assert wire_fast.decode_batch(raw.replace(old, new)) is None
    assert wire_fast.decode_batch(raw.replace(b".1234567", b".123456")) is not None


def test_other_kinds_and_non_batches_fall_back() -> None:
    run = {"kind": "process.run", "event_id": "0123456789abcdef"}
    assert wire_fast.decode_batch(_body([snapshot(), run])) is None
    for raw in (b"", b"[]", b'{"events": {}}', b"not json", b'{"events": [1]}'):
        assert wire_fast.decode_batch(raw) is None
    assert wire_fast.decode_batch(b'{"events": [], "other": 1}') == []


def test_prepared_fast_and_pydantic_events_store_the_same() -> None:
    for ev in ACCEPTED:
        fast = wire_fast.decode_batch(_body([ev]))
        slow = _pydantic(ev)
        assert fast is not None and slow is not None
        a, b = prepare_event(fast[0]), prepare_event(slow)
        assert (a.blob, a.content_error) == (b.blob, b.content_error)


def test_max_inline_content_boundary_matches() -> None:
    # the longest base64 text pydantic allows decodes to exactly MAX_B64_BYTES bytes
    for n in range(wire_fast.MAX_B64_BYTES - 4, wire_fast.MAX_B64_BYTES + 5):
        ev = snapshot(content_b64=base64.b64encode(b"y" * n).decode(), size=n, sha256=None)
        fast_ok = wire_fast.decode_batch(_body([ev])) is not None
        assert fast_ok == (_pydantic(ev) is not None), n
