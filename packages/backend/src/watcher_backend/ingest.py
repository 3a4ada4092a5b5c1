"""Agent ingest: event batches and content blobs (agent or admin token).

A batch is parsed leniently: when the whole body does not validate in one pass, each
event is validated on its own, so one malformed event is answered ``rejected`` (with the
validation message) while the others are stored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection

from watcher_common.wire import EVENT_KINDS, SHA256_RE, Event, parse_event

from .auth import require_agent
from .blobs import BlobHashMismatch, PreparedBlob, blob_exists, insert_blob, prepare_blob
from .config import Settings
from .limits import read_body
from .ops import Metrics
from .store import AnyEvent, Outcome, Prepared, prepare_event, prepare_events
from .wire_fast import decode_batch
from .writer import GroupCommitWriter

router = APIRouter(tags=["ingest"], dependencies=[Depends(require_agent)])

Sha256Path = Annotated[
    str, Path(pattern=SHA256_RE.pattern, description="lowercase hex SHA-256 of the content")
]
# Hash + compress larger uploads off the event loop.
_THREADPOOL_OVER = 256 * 1024


class _BatchBody(BaseModel):
    # other top-level keys are ignored (pydantic's default), as by the lenient path
    events: list[Event]


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}" if loc else str(err["msg"]))
    more = exc.error_count() - len(parts)
    if more > 0:
        parts.append(f"(+{more} more)")
    return "; ".join(parts)


def _claimed(item: Any, key: str, allowed: tuple[str, ...] | None = None) -> str:
    value = item.get(key) if isinstance(item, dict) else None
    if not isinstance(value, str) or len(value) > 128:
        return "" if allowed is None else "unknown"
    if allowed is not None and value not in allowed:
        return "unknown"
    return value


@dataclass(slots=True)
class ParsedBatch:
    """A request's events: valid ones prepared for the writer, the others answered."""

    results: list[Outcome | None]  # by position; None = valid, answered by the writer
    valid: list[Prepared] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    invalid: Counter[tuple[str, str]] = field(default_factory=Counter)


def parse_batch(body: bytes, max_events: int) -> ParsedBatch:
    """Validate a request body; HTTPException for a body that is not a batch at all."""
    # Fastest: file events only, every one valid (see wire_fast: it accepts no more than
    # pydantic does, so whatever it refuses is decided below exactly as before).
    events: Sequence[AnyEvent] | None = decode_batch(body)
    if events is None:
        try:
            # The whole body in one pass of pydantic-core (no json.loads dicts).
            events = _BatchBody.model_validate_json(body).events
        except ValidationError:
            events = None  # some event (or the body) is bad: find out which, one by one
    if events is not None:
        if len(events) > max_events:
            raise _too_many(len(events), max_events)
        batch = ParsedBatch(results=[None] * len(events))
        batch.valid = prepare_events(events)
        batch.positions = list(range(len(events)))
        return batch
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(422, "request body is not valid JSON") from None
    items = doc.get("events") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise HTTPException(422, 'request body must be a JSON object {"events": [...]}')
    if len(items) > max_events:
        raise _too_many(len(items), max_events)
    batch = ParsedBatch(results=[None] * len(items))
    for i, item in enumerate(items):
        try:
            ev = parse_event(item)
        except ValidationError as exc:
            batch.results[i] = (_claimed(item, "event_id"), "rejected", _validation_message(exc))
            batch.invalid[(_claimed(item, "kind", EVENT_KINDS), "rejected")] += 1
            continue
        batch.valid.append(prepare_event(ev))
        batch.positions.append(i)
    return batch


def _too_many(n: int, limit: int) -> HTTPException:
    return HTTPException(413, f"too many events in one batch: {n} > {limit}")


@router.post(
    "/api/v1/events",
    response_model=None,
    responses={
        200: {"description": "one result per event, in order (IngestResponse)"},
        413: {"description": "body or batch too large"},
        422: {"description": "not a JSON object with an events array"},
    },
)
async def ingest_events(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    body = await read_body(request, settings.max_body_bytes)
    batch = parse_batch(body, settings.max_batch_events)
    if batch.invalid:
        metrics: Metrics = request.app.state.metrics
        metrics.count_events(batch.invalid)
    results = batch.results
    if batch.valid:
        writer: GroupCommitWriter = request.app.state.writer
        outcomes = await writer.submit_prepared(batch.valid)
        if len(outcomes) == len(results):  # every event was valid: positions 0..n-1
            results = list(outcomes)
        else:
            for pos, res in zip(batch.positions, outcomes, strict=True):
                results[pos] = res
    payload = {
        "results": [
            {"event_id": eid, "status": status}
            if error is None
            else {"event_id": eid, "status": status, "error": error}
            for eid, status, error in (r for r in results if r is not None)
        ]
    }
    try:
        # ~0.35 µs per event less than pydantic-core's to_json; the same bytes
        body = orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # a lone surrogate (e.g. in a rejected event's claimed id) is not UTF-8: escape it
        # (pydantic-core's to_json refused it too, which was a 500)
        body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, media_type="application/json")


@router.put(
    "/api/v1/blobs/{sha256}",
    status_code=201,
    responses={
        200: {"description": "already stored"},
        201: {"description": "stored"},
        413: {"description": "blob too large"},
        422: {"description": "content does not hash to the sha256 in the path"},
    },
)
async def put_blob(request: Request, sha256: Sha256Path) -> JSONResponse:
    settings: Settings = request.app.state.settings
    data = await read_body(request, settings.max_blob_bytes)
    try:
        if len(data) > _THREADPOOL_OVER:
            prepared = await run_in_threadpool(prepare_blob, sha256, data)
        else:
            prepared = prepare_blob(sha256, data)
    except BlobHashMismatch:
        raise HTTPException(422, "content does not match the sha256 in the path") from None
    writer: GroupCommitWriter = request.app.state.writer

    def store(conn: Connection, blob: PreparedBlob = prepared) -> bool:
        return insert_blob(conn, blob)

    created = await writer.run(store)
    return JSONResponse(
        {"sha256": sha256, "size": prepared.size, "created": created},
        status_code=201 if created else 200,
    )


@router.head("/api/v1/blobs/{sha256}", responses={404: {"description": "not stored"}})
def head_blob(request: Request, sha256: Sha256Path) -> Response:
    """200 if the blob is stored (the agent can skip the upload), else 404."""
    with request.app.state.engine.connect() as conn:
        found = blob_exists(conn, sha256)
    return Response(status_code=200 if found else 404)
