"""put_many's one-statement path (batches without blobs) and EncodedEvent items: the
stored rows and the queue's event/byte counts stay exact when a batch repeats an id."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _fake_ingest import delete_event

from watcher_common.outbox import EncodedEvent, Outbox, OutboxFull
from watcher_common.wire import parse_event


def _body_bytes(ob: Outbox) -> int:
    return sum(q.size for q in ob.next_batch(10_000, 1 << 30))


def test_a_batch_repeating_queued_ids_stores_and_counts_each_once(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    try:
        ev = [delete_event(i) for i in range(6)]
        ob.put_many(ev[:3])
        assert ob.stats().events == 3
        # 1 and 2 are queued already, 3..5 are new, 5 twice within the batch
        ob.put_many([ev[i] for i in (1, 2, 3, 4, 5, 5)])
        st = ob.stats()
        assert st.events == 6
        assert st.bytes == _body_bytes(ob)  # the byte count matches the rows exactly
    finally:
        ob.close()


def test_encoded_events_are_stored_as_given(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db")
    try:
        model, other = delete_event(7), delete_event(8)
        body = model.model_dump_json(exclude_none=True).encode()
        enc = EncodedEvent(model.event_id, model.kind, body)
        ob.put_many([enc, other])
        ob.put(enc)  # a re-put of the same id is harmless
        batch = ob.next_batch(10, 1 << 20)
        assert [q.event_id for q in batch] == [model.event_id, other.event_id]
        assert batch[0].body == body and parse_event(json.loads(body)) == model
        assert ob.stats().events == 2
        with pytest.raises(ValueError, match="content"):
            ob.put_many([(enc, b"data")])
    finally:
        ob.close()


def test_a_bulk_batch_over_budget_stores_nothing(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=2_000)
    try:
        ob.put_many([delete_event(i) for i in range(2)])
        before = ob.stats()
        with pytest.raises(OutboxFull):
            ob.put_many([delete_event(i) for i in range(10, 40)])
        after = ob.stats()
        assert (after.events, after.bytes) == (before.events, before.bytes) == (2, _body_bytes(ob))
    finally:
        ob.close()
