"""The instructor UI in a real browser: Debian's Chromium driven by Playwright, against a
real ``watcher-backend`` process seeded through the ingest API.

One walk through sign-in (a wrong token refused), class → student table → timeline →
build diagnostics (exact code, highlighted line) → replay and diff, the language switch
(remembered across reloads), XSS-shaped student data shown as text, and sign-out.
Screenshots go to ``.artifacts/ui/`` (gitignored). No browser is downloaded: a missing
/usr/bin/chromium fails the test (scripts/install-deps.sh installs it).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from watcher_backend.demo_data import EventFactory, diag

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[3] / ".artifacts" / "ui"
AGENT, READER = "ui-agent-token-0123456789", "ui-reader-token-0123456789"
CLASS, HW = "os-1", "hw1"
HERO = "202600007"  # the student whose history the walk checks
BUSY = "202600099"  # 2,000 saves: the timeline must stay usable
XSS_NAME = "<img src=x onerror=window.__xss=1>.c"
XSS_MSG = "expected ‘;’ before <script>window.__xss=2</script>"
START = datetime(2026, 11, 2, 1, 0, tzinfo=UTC)  # 10:00 in Seoul

V1 = b"#include <stdio.h>\n\nint main(void) {\n    count = 0;\n    return 0;\n}\n"
V2 = b'#include <stdio.h>\n\nint main(void) {\n    int count = 0;\n    printf("%d\\n", count);\n    return 0;\n}\n'  # noqa: E501


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(base: str, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 500):
        req = urllib.request.Request(
            f"{base}/api/v1/events",
            data=json.dumps({"events": events[i : i + 500]}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {AGENT}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            results = json.load(resp)["results"]
        assert all(r["status"] in ("stored", "duplicate") for r in results), results[:3]


def _seed(base: str) -> None:
    f = EventFactory(CLASS, prefix="ui")
    ev: list[dict[str, Any]] = []
    # 60 ordinary students (pagination at 50), a few who never started
    for n in range(60):
        sid = f"2026{n + 100:05d}"
        if n % 12 == 0:
            ev.append(f.save(sid, "hw2", "a.c", START, b"int x;\n"))  # known, hw1 not started
            continue
        t = START + timedelta(hours=n % 30, minutes=n)
        for k in range(1 + n % 5):
            t += timedelta(minutes=3)
            ev.append(f.save(sid, HW, "main.c", t, V2 + b"// " + bytes(str(k), "ascii") * n))
            ev.append(f.build(sid, HW, t + timedelta(seconds=5)))
    # the hero: broken save, failing build on it, fix, good build, a crash, a pasted file
    t = START + timedelta(days=1)
    s1 = f.save(HERO, HW, "main.c", t, V1)
    b1 = f.build(HERO, HW, t + timedelta(seconds=10), [
        diag("‘count’ undeclared (first use in this function)", 4, 5),
        diag("each undeclared identifier is reported only once", 4, 5, severity="note"),
    ])  # fmt: skip
    b1["source_files"] = [{"path": "main.c", "sha256": hashlib.sha256(V1).hexdigest(),
                           "size": len(V1)}]  # fmt: skip
    s2 = f.save(HERO, HW, "main.c", t + timedelta(minutes=2), V2)
    b2 = f.build(HERO, HW, t + timedelta(minutes=2, seconds=8))
    r1 = f.run(HERO, HW, t + timedelta(minutes=2, seconds=20), signal=11)
    x1 = f.save(HERO, HW, XSS_NAME, t + timedelta(minutes=3), b"int y;\n")
    b3 = f.build(HERO, HW, t + timedelta(minutes=4), [diag(XSS_MSG, 1, 1, file=XSS_NAME)])
    c1 = f.cell(HERO, HW, t + timedelta(minutes=5), 0, ok=False)
    # paste-like: +~900 bytes 10 s after the previous save of that file
    p1 = f.save(HERO, HW, "list.c", t + timedelta(minutes=6), b"struct node;\n")
    big = b"struct node;\n" + b"void insert(struct node **h, int v) { /* ... */ }\n" * 18
    p2 = f.save(HERO, HW, "list.c", t + timedelta(minutes=6, seconds=10), big)
    ev += [s1, b1, s2, b2, r1, x1, b3, c1, p1, p2]
    # a long history: 2,000 saves of one file
    t = START + timedelta(days=2)
    for k in range(2000):
        body = b"int main(void) {\n" + b"    step();\n" * (k % 40) + b"}\n"
        ev.append(f.save(BUSY, HW, "busy.c", t + timedelta(seconds=20 * k), body))
    _post(base, ev)


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ui")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHER_")}
    env.update(PORT=str(port), HOST="127.0.0.1", DB_URL=f"sqlite:///{tmp / 'watcher.db'}",
               WATCHER_AGENT_TOKEN=AGENT, WATCHER_READER_TOKEN=READER)  # fmt: skip
    exe = Path(sys.executable).with_name("watcher-backend")
    log = (tmp / "backend.log").open("wb")
    proc = subprocess.Popen([str(exe)], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((tmp / "backend.log").read_text()[-3000:]) from None
                time.sleep(0.1)
        _seed(base)
        yield Server(base, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
        assert READER not in (tmp / "backend.log").read_text()  # never logged


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[Page]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (scripts/install-deps.sh)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        ctx = browser.new_context(viewport={"width": 1360, "height": 900}, locale="ko-KR")
        pg = ctx.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.set_default_timeout(10_000)
        yield pg
        browser.close()
        assert not errors, errors


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def timed(label: str, t0: float, timings: dict[str, float]) -> None:
    timings[label] = time.perf_counter() - t0


@pytest.mark.slow
def test_instructor_walk(server: Server, page: Page) -> None:
    timings: dict[str, float] = {}
    base = server.base

    # sign-in: the shell sends an anonymous visitor to the login page
    page.goto(f"{base}/")
    expect(page.get_by_test_id("token")).to_be_visible()
    expect(page.locator("h1")).to_have_text("강의자 로그인")
    page.get_by_test_id("token").fill("not-a-token")
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_have_text("토큰이 올바르지 않습니다.")
    page.get_by_test_id("token").fill(AGENT)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("login-error")).to_contain_text("reader 또는 admin")
    shot(page, "01-login-refused")
    cookies_before = page.context.cookies()
    page.get_by_test_id("token").fill(READER)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("class-card")).to_have_count(1)
    cookie = next(c for c in page.context.cookies() if c["name"] == "watcher_session")
    assert not cookies_before and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert READER not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # invisible to scripts

    # class → assignments + heatmap → student table (server-paginated)
    page.get_by_test_id("class-card").click()
    expect(page.get_by_test_id("heatmap")).to_be_visible()
    shot(page, "02-class")
    t0 = time.perf_counter()
    page.get_by_test_id("assignment-link").filter(has_text=HW).click()
    expect(page.get_by_test_id("student-row")).to_have_count(50)
    timed("student table", t0, timings)
    expect(page.get_by_test_id("pager-status")).to_have_text("1–50 / 62")
    expect(page.get_by_test_id("top-errors")).to_contain_text("'…' undeclared")
    page.locator("button[data-sort=saves]").click()
    expect(page.get_by_test_id("student-link").first).to_have_text(BUSY)  # most saves first
    shot(page, "03-students")
    page.get_by_test_id("search").fill(HERO)
    expect(page.get_by_test_id("student-row")).to_have_count(1)
    expect(page.get_by_test_id("search")).to_be_focused()

    # student: figures, evidence wording, timeline with builds/runs/cells on one axis
    page.get_by_test_id("student-link").click()
    tl = page.get_by_test_id("timeline")
    expect(tl.locator("tr")).to_have_count(10)
    expect(tl).to_contain_text("SIGSEGV")
    expect(tl).to_contain_text("NameError")
    expect(page.get_by_test_id("evidence")).to_contain_text("판정이 아닙니다")
    expect(page.get_by_test_id("timeline-axis").locator("rect.mark")).to_have_count(10)
    expect(page.get_by_test_id("evidence")).to_contain_text("붙여넣기 형태 저장")
    expect(page.get_by_test_id("evidence-pastes")).to_contain_text("list.c")
    expect(page.get_by_test_id("files")).to_contain_text(XSS_NAME)  # shown as text
    shot(page, "04-student")

    # the evidence links to the diff that shows it
    page.get_by_test_id("evidence-pastes").locator("a").click()
    expect(page.get_by_test_id("diff").locator("tr.add")).to_have_count(18)
    page.go_back()

    # a failed build → the exact code it compiled, diagnostic line highlighted
    page.get_by_test_id("build-link").first.click()
    expect(page.get_by_test_id("diagnostics")).to_contain_text(
        "‘count’ undeclared (first use in this function)"
    )
    expect(page.get_by_test_id("run-result")).to_contain_text("exit 1")
    marked = page.locator("[data-testid=source] tr.marked.error")
    expect(marked).to_have_count(1)
    expect(marked).to_have_attribute("data-line", "4")
    expect(marked).to_contain_text("count = 0;")
    expect(marked).not_to_contain_text("int count")  # V1, not the later fix
    shot(page, "05-build")

    # replay: step through main.c, diff the two versions (unified, side by side)
    page.go_back()
    page.get_by_test_id("file-link").filter(has_text="main.c").click()
    expect(page.get_by_test_id("version-label")).to_have_text("버전 2/2")
    expect(page.get_by_test_id("code")).to_contain_text('printf("%d\\n", count);')
    page.get_by_test_id("prev").click()
    expect(page.get_by_test_id("version-label")).to_have_text("버전 1/2")
    expect(page.get_by_test_id("code")).not_to_contain_text("printf")
    page.get_by_test_id("next").click()
    page.get_by_test_id("mode-unified").click()
    diff = page.get_by_test_id("diff")
    expect(diff.locator("tr.del")).to_contain_text("count = 0;")
    expect(diff.locator("tr.add").first).to_contain_text("int count = 0;")
    page.get_by_test_id("mode-split").click()
    expect(page.get_by_test_id("diff").locator("td.add").first).to_contain_text("int count")
    shot(page, "06-diff")

    # 2,000 saves: the timeline's first page and any-to-any diff stay fast
    t0 = time.perf_counter()
    page.goto(f"{base}/#/c/{CLASS}/{HW}/{BUSY}")
    expect(page.get_by_test_id("timeline").locator("tr")).to_have_count(200)
    timed("timeline (2,000 saves)", t0, timings)
    page.get_by_test_id("timeline-more").click()
    expect(page.get_by_test_id("timeline").locator("tr")).to_have_count(400)
    page.goto(f"{base}/#/c/{CLASS}/{HW}/{BUSY}/replay?path=busy.c&mode=unified")
    expect(page.get_by_test_id("version-label")).to_have_text("버전 2000/2000")
    t0 = time.perf_counter()
    page.get_by_test_id("compare-from").select_option(index=5)
    expect(page.get_by_test_id("diff").locator("tr.add")).to_have_count(34)  # 5 → 39 lines
    timed("diff (version 6 → 2000)", t0, timings)
    t0 = time.perf_counter()
    page.get_by_test_id("slider").fill("1000")
    expect(page.get_by_test_id("version-label")).to_have_text("버전 1001/2000")
    timed("slider step", t0, timings)
    shot(page, "07-replay-2000")

    # language: English labels, remembered across a reload; back to Korean
    page.get_by_test_id("lang-toggle").click()
    expect(page.get_by_test_id("version-label")).to_have_text("Version 1001 of 2000")
    expect(page.get_by_test_id("logout")).to_have_text("Sign out")
    page.reload()
    expect(page.get_by_test_id("logout")).to_have_text("Sign out")
    assert page.evaluate("document.documentElement.lang") == "en"
    page.goto(f"{base}/#/c/{CLASS}/{HW}")
    expect(page.locator("th").filter(has_text="Build success")).to_have_count(1)
    shot(page, "08-english")
    page.get_by_test_id("lang-toggle").click()
    expect(page.locator("th").filter(has_text="빌드 성공률")).to_have_count(1)

    # nothing student-written ran as markup
    assert page.evaluate("window.__xss") is None

    # sign out: the cookie is gone and the API refuses the browser
    page.get_by_test_id("logout").click()
    expect(page.get_by_test_id("token")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "watcher_session"]
    page.goto(f"{base}/#/c/{CLASS}")
    expect(page.get_by_test_id("token")).to_be_visible()
    status = page.evaluate("fetch('/api/v1/classes').then(r => r.status)")
    assert status == 401
    # signing in again goes back to the page that asked for it
    expired = "세션이 만료되었습니다. 다시 로그인하세요."
    expect(page.get_by_test_id("login-error")).to_have_text(expired)
    page.get_by_test_id("token").fill(READER)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("heatmap")).to_be_visible()
    assert page.url.endswith(f"#/c/{CLASS}")

    print("UI timings (s):", {k: round(v, 3) for k, v in timings.items()})
    # loose guards against a page that loads everything (bench/ui_pages.py has the numbers)
    assert timings["timeline (2,000 saves)"] < 5.0
    assert timings["diff (version 6 → 2000)"] < 5.0
