"""The FastAPI application: lifespan (engine, migrations, writer), routers, error handling."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, compat_names, ingest, ops, ui
from .analytics_warm import AnalyticsWarmer
from .auth import TokenTable
from .compat_fast import CompatWriteFastPath
from .config import Settings
from .db.engine import make_engine, migrate
from .limits import BodyLimitMiddleware
from .ops import Metrics, MetricsMiddleware
from .routes import flatten_routes
from .session import SessionSigner
from .writer import GroupCommitWriter, WriterStopped

log = logging.getLogger("watcher_backend")

# Read-side routers written separately; included when present (order matters: compat's
# catch-all /api/{class_div}/{hw}/{student} must come last).
OPTIONAL_ROUTERS = ("watcher_backend.query", "watcher_backend.analytics", "watcher_backend.compat")


def _optional_router(module: str) -> Any | None:
    if importlib.util.find_spec(module) is None:
        return None
    return importlib.import_module(module).router


def create_app(settings: Settings | None = None, *, compat_fast_path: bool = True) -> FastAPI:
    """The app; ``compat_fast_path=False`` leaves the old-API writes to their FastAPI routes
    only (tests compare both)."""
    settings = Settings.from_env() if settings is None else settings
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.db_url)
        migrate(engine)
        log.info("Database initialized")
        if not settings.has_tokens:
            log.warning(
                "no API tokens are configured (WATCHER_AGENT_TOKEN, WATCHER_READER_TOKEN, "
                "WATCHER_ADMIN_TOKEN): every route except /health and /metrics answers 401"
            )
        writer = GroupCommitWriter(
            engine,
            max_batch=settings.writer_max_batch,
            on_commit=metrics.observe_commit,
            on_event=metrics.count_events,
        )
        compat_names.install(engine, writer)  # before the writer opens its connection
        writer.start()
        warmer = AnalyticsWarmer(engine, settings.analytics_warm_idle_s, registry=metrics.registry)
        warmer.start()
        app.state.engine = engine
        app.state.writer = writer
        app.state.warmer = warmer
        try:
            yield
        finally:
            warmer.stop()
            writer.stop()
            engine.dispose()

    app = FastAPI(
        title="JCode Watcher",
        version=__version__,
        description="Ingest, storage and query API of the JCode Watcher",
        lifespan=lifespan,
        # No OpenTelemetry here: FastAPI's per-request check for configured global
        # providers cost ~12 µs of CPU on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.tokens = TokenTable(settings)
    app.state.sessions = SessionSigner(
        settings.session_secret,
        int(settings.session_hours * 3600),
        settings.reader_tokens + settings.admin_tokens,
    )
    app.state.metrics = metrics

    app.include_router(ops.router)
    app.include_router(ingest.router)
    ui.install(app)
    for module in OPTIONAL_ROUTERS:
        router = _optional_router(module)
        if router is not None:
            app.include_router(router)
    flatten_routes(app)  # one linear match per request (FastAPI nests included routers)

    _install_error_handlers(app)
    # Last added runs first: metrics see every response, including the limit's 413s. The
    # compat write fast path runs before both (it limits and counts what it answers itself,
    # the same way) so the old agents' POSTs skip two layers.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_blob_bytes=settings.max_blob_bytes,
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(
        CompatWriteFastPath,
        metrics=metrics,
        max_body_bytes=settings.max_body_bytes,
        max_blob_bytes=settings.max_blob_bytes,
        enabled=compat_fast_path,
    )
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only loc/msg/type: echoing the input could fail to encode (raw bytes) → 500.
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(WriterStopped)
    async def _writer_stopped(_request: Request, _exc: WriterStopped) -> JSONResponse:
        return JSONResponse(
            {"detail": "the server is shutting down; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        # Type only: driver messages can contain row values (student ids).
        log.error("database error: %s", type(exc).__name__)
        return JSONResponse(
            {"detail": "database unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _internal(_request: Request, exc: Exception) -> JSONResponse:
        # A bug, never user input: logged with its traceback by the server as well.
        log.error("unhandled %s", type(exc).__name__)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
