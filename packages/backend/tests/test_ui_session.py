"""Instructor UI: static shell, sign-in/out, and the session cookie as a reader credential.

The route walk in test_auth.py checks every API route against a session cookie; here the
cookie itself: its attributes, what it contains, expiry, forgery, revocation with the token.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from watcher_backend.app import create_app
from watcher_backend.config import Settings
from watcher_backend.session import COOKIE_NAME, SessionSigner
from watcher_backend.ui import assets_prefix

# The tokens conftest configures (the fixtures hand them out as headers).
READER_TOKEN = "test-reader-token-0123456789"
ADMIN_TOKEN = "test-admin-token-0123456789"
AGENT_TOKEN = "test-agent-token-0123456789"
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_tokens_match_conftest(reader_headers: dict[str, str], agent_headers: dict[str, str],
                               admin_headers: dict[str, str]) -> None:  # fmt: skip
    assert reader_headers["Authorization"] == f"Bearer {READER_TOKEN}"
    assert agent_headers["Authorization"] == f"Bearer {AGENT_TOKEN}"
    assert admin_headers["Authorization"] == f"Bearer {ADMIN_TOKEN}"


@sqlite_only
def test_shell_is_served_without_a_token_with_a_strict_csp(client: TestClient) -> None:
    prefix = assets_prefix()
    assert re.fullmatch(r"/ui/assets/[0-9a-f]{12}", prefix)
    for path in ("/", "/ui/"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert f'<script type="module" src="{prefix}/js/main.js">' in r.text
        assert '"/ui/assets/js' not in r.text  # every asset URL carries the version
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert r.headers["cache-control"] == "no-cache"
    js = client.get(f"{prefix}/js/main.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert js.headers["x-content-type-options"] == "nosniff"
    assert "immutable" in js.headers["cache-control"]
    assert client.get(f"{prefix}/style.css").status_code == 200
    missing = client.get(f"{prefix}/nope.js")
    assert missing.status_code == 404
    assert "immutable" not in missing.headers.get("cache-control", "")
    assert client.get("/ui/assets/js/main.js").status_code == 404  # unversioned: not served
    assert client.get(f"{prefix}/../ui.py").status_code == 404


@sqlite_only
@pytest.mark.parametrize("token", [READER_TOKEN, ADMIN_TOKEN])
def test_sign_in_sets_an_httponly_strict_cookie_without_the_token(
    client: TestClient, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.get("/api/v1/classes").status_code == 401
    with caplog.at_level(logging.DEBUG):
        r = client.post("/ui/session", json={"token": token})
    assert r.status_code == 204
    header = r.headers["set-cookie"]
    assert header.startswith(f"{COOKIE_NAME}=")
    lowered = header.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/" in lowered
    assert "secure" not in lowered  # plain http: a Secure cookie would never come back
    assert token not in header and token not in caplog.text
    assert client.get("/api/v1/classes").status_code == 200  # the client keeps the cookie
    # reads only: ingest and admin routes still want a bearer token
    assert client.post("/api/v1/events", json={"events": []}).status_code == 401


@sqlite_only
def test_secure_cookie_over_https(app: object) -> None:
    with TestClient(app, base_url="https://testserver") as c:  # type: ignore[arg-type]
        r = c.post("/ui/session", json={"token": READER_TOKEN})
        assert r.status_code == 204 and "secure" in r.headers["set-cookie"].lower()
    with TestClient(app) as c:  # type: ignore[arg-type]
        # behind a TLS-terminating ingress: plain http inside, the browser's origin is https
        headers = {"X-Forwarded-Proto": "https", "Origin": "https://testserver"}
        r = c.post("/ui/session", json={"token": READER_TOKEN}, headers=headers)
        assert r.status_code == 204 and "secure" in r.headers["set-cookie"].lower()


@sqlite_only
def test_wrong_tokens_are_refused(client: TestClient) -> None:
    assert client.post("/ui/session", json={"token": "nope"}).status_code == 401
    assert client.post("/ui/session", json={"token": AGENT_TOKEN}).status_code == 403
    assert client.post("/ui/session", json={"token": ""}).status_code == 401
    assert client.post("/ui/session", json={}).status_code == 422
    assert client.post("/ui/session", json={"token": "x" * 5000}).status_code == 422
    assert "set-cookie" not in client.post("/ui/session", json={"token": "nope"}).headers
    # form posts from another site cannot sign a browser in (login CSRF)
    r = client.post(
        "/ui/session", json={"token": READER_TOKEN}, headers={"Origin": "https://evil.example"}
    )
    assert r.status_code == 403
    for origin in ("null", "http://testserver.evil.example", "http://evil.example/testserver"):
        r = client.post("/ui/session", json={"token": READER_TOKEN}, headers={"Origin": origin})
        assert r.status_code == 403, origin
    r = client.post(
        "/ui/session", json={"token": READER_TOKEN}, headers={"Origin": "http://testserver"}
    )
    assert r.status_code == 204


@sqlite_only
def test_logout_clears_the_cookie(client: TestClient) -> None:
    client.post("/ui/session", json={"token": READER_TOKEN})
    assert client.get("/api/v1/classes").status_code == 200
    r = client.post("/ui/logout")
    assert r.status_code == 204 and "max-age=0" in r.headers["set-cookie"].lower()
    assert client.get("/api/v1/classes").status_code == 401


@sqlite_only
def test_a_bad_bearer_is_not_rescued_by_a_good_cookie(client: TestClient) -> None:
    client.post("/ui/session", json={"token": READER_TOKEN})
    r = client.get("/api/v1/classes", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


def test_session_expiry_forgery_and_revocation(tmp_path: Path) -> None:
    s = SessionSigner("", 3600, [READER_TOKEN])
    value = s.issue(READER_TOKEN, now=1000.0)
    assert s.valid(value, now=1000.0) and s.valid(value, now=4599.0)
    assert not s.valid(value, now=4601.0)  # expired
    version, expiry, tid, sig = value.split(".")
    assert not s.valid(f"{version}.{int(expiry) + 10**6}.{tid}.{sig}", now=1000.0)
    assert not s.valid("v1.x.y.z") and not s.valid("") and not s.valid("a.b.c.d.e")
    # another process (random secret) does not accept it
    assert not SessionSigner("", 3600, [READER_TOKEN]).valid(value, now=1000.0)
    # a configured secret survives restarts, until the token leaves the configuration
    a = SessionSigner("shared-secret", 3600, [READER_TOKEN])
    kept = a.issue(READER_TOKEN)
    assert SessionSigner("shared-secret", 3600, [READER_TOKEN, "other"]).valid(kept)
    assert not SessionSigner("shared-secret", 3600, ["other"]).valid(kept)
    assert READER_TOKEN not in kept


def test_session_secret_from_env(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\n")
    env = {
        "WATCHER_SESSION_SECRET_FILE": str(secret_file),
        "WATCHER_SESSION_HOURS": "2",
        "WATCHER_READER_TOKEN": READER_TOKEN,
        "DB_URL": f"sqlite:///{tmp_path / 'w.db'}",
    }
    settings = Settings.from_env(env)
    assert settings.session_secret == "from-file" and settings.session_hours == 2
    assert "from-file" not in repr(settings)
    app1, app2 = create_app(settings), create_app(settings)
    cookie = app1.state.sessions.issue(READER_TOKEN)
    assert app2.state.sessions.valid(cookie) and app2.state.sessions.lifetime_s == 7200
