"""The instructor web UI: static files (``ui/``) and sign-in/sign-out.

The shell (HTML, JS modules, CSS) holds no data, so it is served without a token; every
figure it shows comes from the read API, which accepts the session cookie set here
(``session.py``, ``auth.require_reader``). No build step and no network fetches: the files
under ``ui/`` are what the browser runs.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, FastAPI, HTTPException, Request
from fastapi.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from .auth import TokenTable
from .session import COOKIE_NAME, SessionSigner

log = logging.getLogger("watcher_backend")

UI_DIR = Path(__file__).parent / "ui"
MAX_TOKEN_CHARS = 4096

# Everything the UI loads comes from this origin; no inline script or style, no framing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# The page itself is revalidated on every visit; the assets it names live under a path that
# changes with their content, so the browser may keep them forever (no request per module).
PAGE_HEADERS = {**_SECURITY_HEADERS, "Cache-Control": "no-cache"}
ASSET_HEADERS = {**_SECURITY_HEADERS, "Cache-Control": "public, max-age=31536000, immutable"}

router = APIRouter(tags=["ui"])


class _UiFiles(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(ASSET_HEADERS if response.status_code == 200 else PAGE_HEADERS)
        return response


@cache
def asset_version() -> str:
    """A digest of every file under ui/: it changes whenever any of them does."""
    h = hashlib.sha256()
    for f in sorted(p for p in UI_DIR.rglob("*") if p.is_file()):
        h.update(f.relative_to(UI_DIR).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def assets_prefix() -> str:
    return f"/ui/assets/{asset_version()}"


@cache
def _index_html() -> bytes:
    # The template names assets under /ui/assets/; point them at this version's path.
    html = (UI_DIR / "index.html").read_text(encoding="utf-8")
    return html.replace("/ui/assets/", assets_prefix() + "/").encode()


def _index() -> Response:
    return Response(_index_html(), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/", include_in_schema=False)
def index_root() -> Response:
    return _index()


@router.get("/ui", include_in_schema=False)
@router.get("/ui/", include_in_schema=False)
def index_ui() -> Response:
    return _index()


def _same_origin(request: Request) -> bool:
    """Browsers send Origin on POST; a foreign one is a cross-site login attempt. Hosts are
    compared, not schemes: behind a TLS-terminating ingress the backend sees plain http."""
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser (curl, tests): nothing to forge
    host = urlsplit(origin).netloc
    return bool(host) and host in (
        request.headers.get("host"),
        request.headers.get("x-forwarded-host"),
    )


def _https(request: Request) -> bool:
    # Trusting X-Forwarded-Proto here is harmless: it can only make the cookie stricter.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


@router.post("/ui/session", status_code=204, response_class=Response)
def sign_in(
    request: Request,
    token: Annotated[str, Body(embed=True, max_length=MAX_TOKEN_CHARS)],
) -> Response:
    """Exchange a reader (or admin) token for a session cookie granting reads."""
    if not _same_origin(request):
        raise HTTPException(403, "cross-origin sign-in refused")
    table: TokenTable = request.app.state.tokens
    roles = table.roles(token)
    if not roles:
        raise HTTPException(401, "invalid token")
    if not roles & {"reader", "admin"}:
        raise HTTPException(403, "this token may not read (reader or admin token needed)")
    signer: SessionSigner = request.app.state.sessions
    response = Response(status_code=204)
    response.set_cookie(
        COOKIE_NAME,
        signer.issue(token),
        max_age=signer.lifetime_s,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )
    log.info("ui sign-in")  # never the token, never who
    return response


@router.post("/ui/logout", status_code=204, response_class=Response)
def sign_out(request: Request) -> Response:
    """Forget the session cookie (sessions are stateless: the cookie is the session)."""
    response = Response(status_code=204)
    response.delete_cookie(
        COOKIE_NAME, path="/", httponly=True, samesite="strict",
        secure=_https(request),
    )  # fmt: skip
    return response


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(assets_prefix(), _UiFiles(directory=UI_DIR), name="ui-assets")
