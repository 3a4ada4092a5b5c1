"""A raw-ASGI fast path for the three old-API write POSTs (``compat_write``'s routes).

Old agents POST one event per save, so per-request overhead is the whole cost: FastAPI's
dependency resolution, the pydantic body model and its response serialisation were ~60%
of the CPU of a compat snapshot write. This middleware answers the *successful* requests
itself, before the router, with the same building blocks as the declared routes
(``compat_write``'s identity, timestamp and filename rules, the same event ids, the same
writer), and the same response bytes.

Anything it is not sure to answer exactly like the declared route — a missing or wrong
token, a body that is not a plain JSON object of the expected types, an unusual content
type, a bad identity, timestamp or file name — is handed to the normal FastAPI route
untouched (the body it read is replayed), so every error answer (401/403/413/422) is the
route's own. Nothing is written before that decision. Only what happens after the event
reached the writer (its verdict, a stopped writer, a database error) is answered here, with
the same status and JSON the route's exception handlers give.

The routes stay declared (OpenAPI, the route-table auth test, schemathesis); the fast path
finds them in the app's route table and uses their own path regexes, behind any earlier
route that could take a POST, so it serves exactly the requests the router would send to
them. It puts the matched route in ``scope["route"]``, so the metrics middleware labels it
by the same template.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from fastapi import HTTPException
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from watcher_common.wire import Event

from . import compat_write as cw
from .auth import TokenTable
from .ops import Metrics, iter_routes
from .store import prepare_event
from .writer import WriterStopped

log = logging.getLogger("watcher_backend")

# Bodies above this are left to the route (old bodies are tiny; a build log's cmdline is
# the largest): the fast path buffers the body before deciding.
_MAX_FAST_BODY = 256 * 1024
_JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8"})
_AGENT_ROLES = frozenset({"agent", "admin"})
_decode = msgspec.json.Decoder()

Kind = Literal["build", "run", "snapshot"]


def _json_body(payload: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    # Starlette's JSONResponse: compact separators, UTF-8, content-length before -type.
    headers = [
        (b"content-length", str(len(payload)).encode()),
        (b"content-type", b"application/json"),
    ]
    return headers, payload


def _detail(detail: str) -> bytes:
    return msgspec.json.encode({"detail": detail})


_OK: dict[Kind, bytes] = {
    "build": b'{"message":"Build log registered successfully"}',
    "run": b'{"message":"Run log registered successfully"}',
    "snapshot": b'{"message":"Snapshot registered successfully"}',
}


class _Delegate(Exception):
    """Leave this request to the declared route (it answers errors its own way)."""


class CompatWriteFastPath:
    """Outermost user middleware: what it answers it limits and counts itself, exactly as
    ``BodyLimitMiddleware`` and ``MetricsMiddleware`` (which see everything it hands on)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        max_blob_bytes: int,
        enabled: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        # Within both of BodyLimitMiddleware's limits (it picks one by path prefix).
        self.max_fast_body = min(_MAX_FAST_BODY, max_body_bytes, max_blob_bytes)
        self.enabled = enabled
        # (path regex, route, kind) in route-table order; built on the first request, when
        # the table is final. ``shadows``: earlier routes that could take the same POST.
        self._routes: list[tuple[Any, APIRoute, Kind]] | None = None
        self._templates: dict[int, str] = {}  # id(route) -> the metrics' route label
        self._shadows: list[Any] = []
        self.answered = 0  # requests this path answered itself (the rest went to the routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            not self.enabled
            or scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].startswith("/api/")
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        if self._routes is None:
            self._routes, self._shadows = _find_routes(scope["app"].router.routes)
            self._templates = {id(i.route): i.template for i in iter_routes(scope["app"])}
        path: str = scope["path"]
        for regex in self._shadows:
            if regex.match(path):
                await self.app(scope, receive, send)
                return
        for regex, route, kind in self._routes:
            match = regex.match(path)
            if match is not None:
                await self._handle(scope, receive, send, route, kind, match.groupdict())
                return
        await self.app(scope, receive, send)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: APIRoute,
        kind: Kind,
        params: dict[str, str],
    ) -> None:
        start = time.perf_counter()
        app_state = scope["app"].state
        length = -1
        content_type = b""
        authorization = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                if length < 0:  # the body limit middleware judged the first one
                    length = int(value) if value.isdigit() else _MAX_FAST_BODY + 1
            elif name == b"content-type":
                if not content_type:
                    content_type = value
            elif name == b"authorization" and authorization is None:
                authorization = value
        fast = (
            0 < length <= self.max_fast_body  # else BodyLimitMiddleware's 400/413, or chunked
            and content_type in _JSON_TYPES
            and authorization is not None
            and _is_agent(app_state.tokens, authorization)
        )
        if not fast:
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        try:
            if messages[-1]["type"] != "http.request":
                raise _Delegate  # the client left: whatever the route does with that
            event = await self._event(app_state, kind, params, b"".join(chunks))
        except Exception:  # _Delegate, or e.g. a database error in the lookup
            # Nothing is written yet: the route does the same work again and answers in its
            # own words (a database error: its handler's 503), counted by the metrics.
            await self.app(scope, _replay(messages, receive), send)
            return
        scope["route"] = route
        self.answered += 1
        status = 500  # as MetricsMiddleware counts an exception escaping the app
        try:
            status = await self._submit(send, app_state, kind, event)
        finally:
            template = self._templates.get(id(route)) or route.path_format
            self.metrics.observe_http("POST", template, status, time.perf_counter() - start)

    @staticmethod
    async def _submit(send: Send, app_state: Any, kind: Kind, event: Event) -> int:
        """Hand the event to the writer and answer its verdict; the status sent."""
        try:
            outcome = (await app_state.writer.submit_prepared([prepare_event(event)]))[0]
        except WriterStopped:
            detail, retry = "the server is shutting down; retry later", [(b"retry-after", b"5")]
            return await _send_json(send, 503, _detail(detail), retry)
        except SQLAlchemyError as exc:
            log.error("database error: %s", type(exc).__name__)
            detail, retry = "database unavailable; retry later", [(b"retry-after", b"5")]
            return await _send_json(send, 503, _detail(detail), retry)
        status, error = outcome[1], outcome[2]
        if status == "rejected":
            return await _send_json(send, 422, _detail(error or "rejected"))
        if status == "retry":
            return await _send_json(send, 503, _detail(error or "try again"))
        return await _send_json(send, 200, _OK[kind])

    async def _event(
        self, app_state: Any, kind: Kind, params: dict[str, str], body: bytes
    ) -> Event:
        """The event the route would build, or _Delegate wherever the route would refuse."""
        try:
            data = _decode.decode(body)
        except msgspec.DecodeError:
            raise _Delegate from None
        if type(data) is not dict:
            raise _Delegate
        class_div, hw_name, student_id = (
            params["class_div"],
            params["hw_name"],
            params["student_id"],
        )
        engine: Engine = app_state.engine
        try:
            cw.check_identity(class_div, student_id, hw_name)
            if kind == "snapshot":
                return await _snapshot_event(engine, class_div, hw_name, student_id, params, data)
            return await _log_event(engine, kind, class_div, hw_name, student_id, data)
        except (HTTPException, ValidationError):
            raise _Delegate from None


async def _snapshot_event(
    engine: Engine,
    class_div: str,
    hw_name: str,
    student_id: str,
    params: dict[str, str],
    data: dict[str, Any],
) -> Event:
    size = data.get("bytes")
    # Exactly what SnapshotIn accepts as-is; anything else (floats, strings, bools) the
    # route coerces or refuses in its own words.
    if type(size) is not int or not 0 <= size <= 2**53:
        raise _Delegate
    filename, stamp = params["filename"], params["stamp"]
    ts = cw.snapshot_time(stamp)
    path = await cw.compat_path(engine, class_div, hw_name, student_id, filename)
    if path is None:
        raise _Delegate
    return cw.snapshot_event(
        [class_div, hw_name, student_id, filename, stamp],
        {"bytes": size},
        ts=ts,
        path=path,
        size=size,
    )


async def _log_event(
    engine: Engine,
    kind: Literal["build", "run"],
    class_div: str,
    hw_name: str,
    student_id: str,
    data: dict[str, Any],
) -> Event:
    model = cw.RunLogIn if kind == "run" else cw.BuildLogIn
    # The route validates the json.loads() value in python (lax) mode; so does this.
    body = model.model_validate(data)
    source = await run_in_threadpool(
        cw.source_of, engine, class_div, hw_name, student_id, body.cwd, body.target_path
    )
    return cw.run_event(kind, class_div, hw_name, student_id, body, source)


def _is_agent(table: TokenTable, authorization: bytes) -> bool:
    # HTTPBearer's parsing (first header, "<scheme> <credentials>", scheme case-insensitive)
    # and require_agent's roles; every refusal is left to the route's own 401/403.
    if table.empty:
        return False
    scheme, _, credentials = authorization.decode("latin-1").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return False
    return not table.roles(credentials).isdisjoint(_AGENT_ROLES)


def _find_routes(
    routes: list[BaseRoute],
) -> tuple[list[tuple[Any, APIRoute, Kind]], list[Any]]:
    endpoints: dict[Callable[..., Awaitable[Any]], Kind] = {
        cw.post_build_log: "build",
        cw.post_run_log: "run",
        cw.post_snapshot: "snapshot",
    }
    found: list[tuple[Any, APIRoute, Kind]] = []
    shadows: list[Any] = []
    for route in routes:
        if (
            isinstance(route, APIRoute)
            and route.endpoint in endpoints
            and "POST" in (route.methods or ())
        ):
            found.append((route.path_regex, route, endpoints[route.endpoint]))
            continue
        methods = getattr(route, "methods", None)
        if not found and (isinstance(route, Mount) or methods is None or "POST" in methods):
            regex = getattr(route, "path_regex", None)
            if regex is None:
                return [], []  # a route we cannot judge: leave everything to the router
            shadows.append(regex)
    if len(found) != len(endpoints):
        return [], []  # routes nested or missing: the router decides
    return found, shadows


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


async def _send_json(
    send: Send, status: int, payload: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> int:
    headers, body = _json_body(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": (extra or []) + headers,
        }
    )
    await send({"type": "http.response.body", "body": body})
    return status
