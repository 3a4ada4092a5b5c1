"""Operations endpoints (open, no token): ``GET /health`` and ``GET /metrics``.

HTTP metrics come from a pure ASGI middleware (BaseHTTPMiddleware costs a task and a
stream per request) and are labelled by the route *template*, never the concrete path,
so student ids cannot leak into labels and the series count stays bounded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as TallyCounter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fastapi.routing
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from sqlalchemy import Engine
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

router = APIRouter(tags=["ops"])

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """One registry per app, so several apps (tests) never share series."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=reg,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ["method", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ingest_events = Counter(
            "watcher_ingest_events_total",
            "Ingested events by kind and result (stored, duplicate, rejected, retry)",
            ["kind", "status"],
            registry=reg,
        )
        self.writer_batch = Histogram(
            "watcher_writer_batch_size",
            "Events applied per group commit",
            buckets=_BATCH_BUCKETS,
            registry=reg,
        )
        self.writer_commit = Histogram(
            "watcher_writer_commit_seconds",
            "Duration of one group-commit transaction (apply + commit)",
            buckets=_COMMIT_BUCKETS,
            registry=reg,
        )
        self._http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._http_children.get(key)
        if children is None:
            children = self._http_children[key] = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def count_events(self, tally: TallyCounter[tuple[str, str]]) -> None:
        for (kind, status), n in tally.items():
            self.ingest_events.labels(kind, status).inc(n)

    def observe_commit(self, events: int, _requests: int, seconds: float) -> None:
        self.writer_batch.observe(events)
        self.writer_commit.observe(seconds)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._templates: dict[int, str] | None = None  # id(route) -> full template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception escaping the app becomes a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"]
            if method not in _METHODS:
                method = "other"
            route = self._template(scope)
            self.metrics.observe_http(method, route, status, time.perf_counter() - start)

    def _template(self, scope: Scope) -> str:
        # The router stores the matched route in the (shared) scope dict.
        route = scope.get("route")
        if route is None:
            return "unmatched"
        if self._templates is None:
            self._templates = {id(i.route): i.template for i in iter_routes(scope["app"])}
        template = self._templates.get(id(route))
        if template is None:
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
        return template or "unmatched"


@dataclass(frozen=True, slots=True)
class RouteInfo:
    template: str  # full path template, e.g. /api/{class_div}/{hw_name}/{student_id}
    route: BaseRoute  # the route object the router puts in scope["route"]
    dependant: Any  # effective FastAPI Dependant (router dependencies included), or None


def iter_routes(app: Any) -> Iterator[RouteInfo]:
    """Every route with its full template and effective dependencies.

    FastAPI ≥ 0.16x keeps included routers nested (``app.routes`` holds wrappers, and a
    route's own ``path`` / ``dependant`` lack the include prefix and router dependencies);
    ``iter_route_contexts`` flattens them.
    """
    iter_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_contexts is None:  # older FastAPI: include_router copies routes flat
        for r in app.routes:
            flat = getattr(r, "path_format", None) or getattr(r, "path", None) or ""
            yield RouteInfo(str(flat), r, getattr(r, "dependant", None))
        return
    for ctx in iter_contexts(app.routes):
        original = ctx.original_route
        template = ctx.path_format or getattr(original, "path_format", None) or ""
        yield RouteInfo(str(template), original, getattr(ctx, "dependant", None))


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@router.get("/health")
def health(request: Request) -> JSONResponse:
    """``{"status": "healthy", "timestamp": "...Z"}``; 503 ``unhealthy`` if the DB fails."""
    engine: Engine | None = getattr(request.app.state, "engine", None)
    try:
        if engine is None:
            raise RuntimeError("database not initialised")
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        log.warning("health check: database unreachable (%s)", type(exc).__name__)
        return JSONResponse({"status": "unhealthy", "timestamp": utc_timestamp()}, status_code=503)
    return JSONResponse({"status": "healthy", "timestamp": utc_timestamp()})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    m: Metrics = request.app.state.metrics
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
