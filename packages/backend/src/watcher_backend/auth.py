"""Bearer-token roles: agent tokens ingest, reader tokens read, admin tokens do anything.

Tokens are compared in constant time against every configured token (no early exit) and
are never logged. 401 (+ ``WWW-Authenticate: Bearer``) for a missing or unknown token,
403 for a known token of the wrong role.

Read routes also accept the instructor UI's signed session cookie (``session.py``), only
when no bearer header is sent and only on GET/HEAD: a session is never an agent or admin
credential, and SameSite=Strict plus read-only methods leave nothing to forge cross-site.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .config import ROLES, Settings
from .session import COOKIE_NAME, SessionSigner

_bearer = HTTPBearer(auto_error=False, description="agent, reader or admin token")
_Creds = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]


class TokenTable:
    def __init__(self, settings: Settings) -> None:
        by_role = {
            "agent": settings.agent_tokens,
            "reader": settings.reader_tokens,
            "admin": settings.admin_tokens,
        }
        # Digests have equal length, so compare_digest's time does not depend on the token.
        self._entries: list[tuple[bytes, str]] = [
            (_digest(tok), role) for role in ROLES for tok in by_role[role]
        ]

    @property
    def empty(self) -> bool:
        return not self._entries

    def roles(self, token: str) -> frozenset[str]:
        d = _digest(token)
        found: set[str] = set()
        for digest, role in self._entries:
            if hmac.compare_digest(d, digest):
                found.add(role)
        return frozenset(found)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _check(
    request: Request,
    creds: HTTPAuthorizationCredentials | None,
    allowed: frozenset[str],
    session_ok: bool = False,
) -> str:
    table: TokenTable = request.app.state.tokens
    if table.empty:
        raise _unauthorized("no API tokens are configured on this server")
    if (creds is None or not creds.credentials) and session_ok:
        cookie = request.cookies.get(COOKIE_NAME)
        if cookie is not None and request.method in ("GET", "HEAD"):
            signer: SessionSigner = request.app.state.sessions
            if signer.valid(cookie):
                return "reader"
            raise _unauthorized("session expired or invalid: sign in again")
    if creds is None or not creds.credentials:
        raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
    roles = table.roles(creds.credentials)
    if not roles:
        raise _unauthorized("invalid token")
    granted = roles & allowed
    if not granted:
        need = " or ".join(sorted(allowed))
        raise HTTPException(status_code=403, detail=f"this token may not use this route ({need})")
    return "admin" if "admin" in granted else next(iter(granted))


_AGENT = frozenset({"agent", "admin"})
_READER = frozenset({"reader", "admin"})
_ADMIN = frozenset({"admin"})


async def require_agent(request: Request, creds: _Creds) -> str:
    """Ingest routes: agent or admin token. Returns the role that was granted."""
    return _check(request, creds, _AGENT)


async def require_reader(request: Request, creds: _Creds) -> str:
    """Read routes: reader or admin token, or a UI session cookie."""
    return _check(request, creds, _READER, session_ok=True)


async def require_admin(request: Request, creds: _Creds) -> str:
    """Everything else (writes outside ingest, administration): admin token."""
    return _check(request, creds, _ADMIN)
