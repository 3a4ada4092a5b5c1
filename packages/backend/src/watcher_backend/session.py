"""Signed browser sessions for the instructor UI (reader rights only).

A signed-in browser holds ``v1.<expiry>.<token id>.<signature>`` in an HttpOnly,
SameSite=Strict cookie. The signature is HMAC-SHA256 under a secret that is random per
process unless ``WATCHER_SESSION_SECRET`` is set (then sessions survive restarts and every
replica accepts them). The token itself never leaves the login request: the cookie names it
only by an HMAC of its digest, so a session dies with its token when the token is removed
from the configuration, and a stolen cookie reveals nothing about the token.

A session grants **reader** rights whatever token created it (admin tokens included): the
browser UI only reads, and a cookie that could ingest or administer would be a CSRF target.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

COOKIE_NAME = "watcher_session"
_VERSION = "v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class SessionSigner:
    def __init__(self, secret: str, lifetime_s: int, tokens: Iterable[str]) -> None:
        # Empty secret → random per process: every session ends when the backend restarts.
        self._key = (
            hashlib.sha256(b"watcher-session\0" + secret.encode()).digest()
            if secret
            else secrets.token_bytes(32)
        )
        self.lifetime_s = lifetime_s
        self._token_ids = frozenset(self.token_id(t) for t in tokens)

    def token_id(self, token: str) -> str:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        return _b64(hmac.new(self._key, b"tid\0" + digest, hashlib.sha256).digest()[:12])

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def issue(self, token: str, now: float | None = None) -> str:
        """A cookie value for a token already checked to be a reader or admin token."""
        expiry = int((time.time() if now is None else now) + self.lifetime_s)
        payload = f"{_VERSION}.{expiry}.{self.token_id(token)}"
        return f"{payload}.{self._sign(payload)}"

    def valid(self, value: str, now: float | None = None) -> bool:
        parts = value.split(".")
        if len(parts) != 4 or parts[0] != _VERSION:
            return False
        payload = ".".join(parts[:3])
        # Constant-time on the signature; the rest is checked only once it is authentic.
        if not hmac.compare_digest(self._sign(payload).encode(), parts[3].encode()):
            return False
        try:
            expiry = int(parts[1])
        except ValueError:
            return False
        if expiry < (time.time() if now is None else now):
            return False
        return parts[2] in self._token_ids
