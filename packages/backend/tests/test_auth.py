"""Every route except /health and /metrics needs a token of the right role.

The routes are taken from ``app.routes`` (not a hand list), so a new route without a
role dependency fails here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.convertors import FloatConvertor, IntegerConvertor
from starlette.testclient import TestClient

from watcher_backend.app import create_app
from watcher_backend.auth import TokenTable, require_admin, require_agent, require_reader
from watcher_backend.config import Settings
from watcher_backend.ops import iter_routes
from watcher_backend.session import COOKIE_NAME

# The UI shell (HTML/JS/CSS, no data) and sign-in/out authenticate nothing by themselves;
# test_ui_session.py checks them. Everything else needs a token or a UI session.
UI_OPEN = {"/", "/ui", "/ui/", "/ui/session", "/ui/logout"}
OPEN = {"/health", "/metrics"} | UI_OPEN
ROLE_DEPS: dict[Callable[..., Any], str] = {
    require_agent: "agent",
    require_reader: "reader",
    require_admin: "admin",
}
# Plausible values by parameter name, so routes get past path matching.
SAMPLES = {
    "class_div": "os-1",
    "hw_name": "hw1",
    "assignment": "hw1",
    "student_id": "202012345",
    "sha256": "a" * 64,
    "filename": "main.c",
    "path": "src/main.c",
}


def _roles(dep: Dependant) -> set[str]:
    found = {ROLE_DEPS[dep.call]} if dep.call in ROLE_DEPS else set()
    for sub in dep.dependencies:
        found |= _roles(sub)
    return found


def _fill(template: str, route: APIRoute) -> str:
    path = template
    for name, conv in route.param_convertors.items():
        numeric = isinstance(conv, IntegerConvertor | FloatConvertor)
        if numeric or (name.endswith("_id") and name != "student_id"):
            value = "1"
        else:
            value = SAMPLES.get(name, "x1")
        path = path.replace("{" + name + ":path}", value).replace("{" + name + "}", value)
    return path


def protected_routes(app: FastAPI) -> Iterator[tuple[str, str, set[str]]]:
    for info in iter_routes(app):
        route = info.route
        if isinstance(route, APIRoute) and info.template not in OPEN:
            for method in sorted(route.methods):
                yield method, _fill(info.template, route), _roles(info.dependant)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_route_needs_the_right_role(
    client: TestClient,
    agent_headers: dict[str, str],
    reader_headers: dict[str, str],
    admin_headers: dict[str, str],
) -> None:
    app: FastAPI = client.app  # type: ignore[assignment]
    routes = list(protected_routes(app))
    assert len(routes) >= 3
    session = app.state.sessions.issue(admin_headers["Authorization"].split()[1])
    by_role = {"agent": agent_headers, "reader": reader_headers, "admin": admin_headers}
    checked = 0
    for method, url, roles in routes:
        assert len(roles) == 1, f"{method} {url}: needs exactly one role dependency, has {roles}"
        (role,) = roles
        kw: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
        r = client.request(method, url, **kw)
        assert r.status_code == 401, f"{method} {url} without token → {r.status_code}"
        assert r.headers.get("www-authenticate") == "Bearer"
        if method != "HEAD":
            assert r.json()["detail"]
        bad = client.request(method, url, headers={"Authorization": "Bearer nope"}, **kw)
        assert bad.status_code == 401, f"{method} {url} unknown token → {bad.status_code}"
        for other, headers in by_role.items():
            if other == role or other == "admin":
                continue
            r = client.request(method, url, headers=headers, **kw)
            assert r.status_code == 403, f"{method} {url} with {other} token → {r.status_code}"
            checked += 1
        # the right role (and admin) gets past auth
        for ok in {role, "admin"}:
            r = client.request(method, url, headers=by_role[ok], **kw)
            assert r.status_code not in (401, 403), f"{method} {url} with {ok} → {r.status_code}"
        # a UI session (even one signed in with the admin token) is a reader credential only
        r = client.request(method, url, headers={"Cookie": f"{COOKIE_NAME}={session}"}, **kw)
        if role == "reader" and method in ("GET", "HEAD"):
            assert r.status_code not in (401, 403), f"{method} {url} with session → {r.status_code}"
        else:
            assert r.status_code == 401, f"{method} {url} with session → {r.status_code}"
        r = client.request(method, url, headers={"Cookie": f"{COOKIE_NAME}={session}x"}, **kw)
        assert r.status_code == 401, f"{method} {url} with forged session → {r.status_code}"
    assert checked >= len(routes)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_open_routes(client: TestClient) -> None:
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_tokens_configured_refuses_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(db_url=f"sqlite:///{tmp_path / 'w.db'}")
    app = create_app(settings)
    with caplog.at_level(logging.WARNING), TestClient(app) as c:
        warnings = [r for r in caplog.records if "no API tokens are configured" in r.message]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
        assert c.get("/health").status_code == 200
        for method, url, _ in protected_routes(app):
            kw: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
                r = c.request(method, url, headers=headers, **kw)
                assert r.status_code == 401, (method, url)


def test_token_table() -> None:
    t = TokenTable(
        Settings(agent_tokens=("a1", "a2"), reader_tokens=("r",), admin_tokens=("x", "a2"))
    )
    assert t.roles("a1") == {"agent"}
    assert t.roles("a2") == {"agent", "admin"}
    assert t.roles("r") == {"reader"}
    assert t.roles("a") == frozenset()
    assert t.roles("") == frozenset()
    assert t.roles("\udcff") == frozenset()  # undecodable header bytes do not crash


def test_tokens_are_not_logged(
    client: TestClient, agent_headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        client.post("/api/v1/events", json={"events": [{"kind": "x"}]}, headers=agent_headers)
        client.get("/api/v1/classes", headers={"Authorization": "Bearer wrong-secret"})
    token = agent_headers["Authorization"].split()[1]
    assert token not in caplog.text and "wrong-secret" not in caplog.text
