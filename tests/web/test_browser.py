"""`kgb web` in headless Chromium (Debian's `chromium`, driven by Playwright): what a person does, and what must never run.

The viewer runs as the real command (`kgb web` in a subprocess) over the
database the consumers filled. Each test saves a screenshot of the pages it
visits into `web-artifacts/` (git-ignored; `KGB_WEB_ARTIFACTS` moves it).
Every page is opened with a listener for Content-Security-Policy violations
and for ``window.__pwned``, which each planted payload would set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from scripts.kafka import free_port
from tests.test_readme import ROOT
from tests.web.captured import SEARCH_WORD, Captured

CHROMIUM = os.environ.get("KGB_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("KGB_WEB_ARTIFACTS", ROOT / "web-artifacts"))
WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.fixture(scope="module")
def viewer(captured: Captured) -> Iterator[str]:
    """`kgb web` on a free port over the captured database; its URL."""
    port = free_port()
    env = {**os.environ, "KGB_DATABASE_URL": captured.dsn, "KGB_WEB_PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    with subprocess.Popen(  # leaving the block closes its stdout pipe
        [sys.executable, "-c", "from kgb.cli import main; main()", "web"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as process:
        try:
            wait_for(url, process)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kgb web exited: {process.stdout.read().decode() if process.stdout else ''}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"kgb web did not answer on {url}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        raise RuntimeError(f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/setup.sh does)")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, viewer: str) -> Iterator[Page]:
    context = browser.new_context(base_url=viewer, viewport={"width": 1400, "height": 900})
    context.add_init_script(WATCH)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    assert errors == []
    context.close()


def unharmed(page: Page) -> None:
    """Nothing planted ran, and the policy had nothing to block."""
    assert page.evaluate("window.__pwned") is None
    assert page.evaluate("window.__violations") == []


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_open_a_session_expand_a_nested_sub_agent_and_follow_a_tool_call(page: Page, captured: Captured) -> None:
    page.goto("/")
    expect(page.get_by_role("link", name="Title at turn 160")).to_be_visible()
    shot(page, "sessions")
    page.get_by_role("link", name="Title at turn 160").click()
    expect(page.get_by_role("heading", name="Title at turn 160")).to_be_visible()
    summary = page.locator("details.subtree > summary", has=page.locator("a > code", has_text="a0000000000000005"))
    nested = summary.locator("xpath=..").locator("code", has_text="b0000000000000005")
    expect(nested).to_be_hidden()
    summary.click(position={"x": 4, "y": 10})  # the disclosure triangle, not the links beside it
    expect(nested).to_be_visible()
    shot(page, "session")
    unharmed(page)

    page.locator("a.kind-main").first.click()
    call = page.locator(".tool-call", has=page.locator(".tool-name", has_text="Bash")).first
    call_id = call.get_attribute("id").removeprefix("u-")
    call.scroll_into_view_if_needed()
    shot(page, "conversation")
    call.locator("a.to-result").click()
    assert page.url.endswith(f"#r-{call_id}")
    result = page.locator(f"#r-{call_id}")
    expect(result).to_be_in_viewport()
    assert page.evaluate("document.querySelector(':target').id") == f"r-{call_id}"
    shot(page, "tool-result")
    unharmed(page)

    page.locator(".exchange a", has_text="exchange").first.click()
    expect(page.locator("h1", has_text="POST /v1/messages")).to_be_visible()
    shot(page, "exchange")
    unharmed(page)


def test_search_a_word_and_land_on_its_message(page: Page, captured: Captured) -> None:
    page.goto("/")
    page.get_by_role("searchbox", name="Search").fill(SEARCH_WORD)
    page.get_by_role("searchbox", name="Search").press("Enter")
    hit = page.locator("a.hit-link")
    expect(hit).to_have_count(1)
    expect(page.locator("mark", has_text=SEARCH_WORD)).to_be_visible()
    shot(page, "search")
    hit.click()
    position = page.url.rsplit("#m-", 1)[1]
    message = page.locator(f"#m-{position}")
    expect(message).to_be_in_viewport()
    expect(message).to_contain_text(SEARCH_WORD)
    unharmed(page)


def test_the_usage_charts_render(page: Page) -> None:
    page.goto("/usage")
    for chart in ("tokens-chart", "cost-chart"):
        expect(page.locator(f"#{chart}")).to_have_attribute("data-drawn", "true")
        drawn: Any = page.evaluate(f"Chart.getChart('{chart}').data.datasets.map(d => d.data.reduce((a, b) => a + b, 0))")
        assert sum(drawn) > 0, chart
        painted = page.evaluate(f"""(() => {{
            const c = document.getElementById('{chart}');
            const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) n++;
            return n; }})()""")
        assert painted > 1000, chart  # bars, axes and labels, not an empty canvas
    expect(page.locator("#usage-table tbody tr")).not_to_have_count(0)
    shot(page, "usage")
    unharmed(page)


def test_planted_scripts_images_links_and_raw_html_stay_inert(page: Page, captured: Captured) -> None:
    page.goto(f"/session?key={captured.planted.session_id}")
    expect(page.get_by_role("heading", name=re.compile("Planted <script>"))).to_be_visible()
    unharmed(page)
    conversations = [a.get_attribute("href") for a in page.locator("a[href^='/conversations/']").all()]
    assert len(conversations) == 3  # main, title, web search
    for href in conversations:
        page.goto(href)
        for details in page.locator("details").all():
            details.evaluate("d => d.open = true")  # thinking and reminders laid out too
        for raw in page.get_by_text("raw html in markdown").all():
            raw.hover()
        assert page.locator("script").count() == 0  # a conversation has no script of its own
        assert (
            page.evaluate(
                "[...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on'))).length"
            )
            == 0
        )
        assert (
            page.evaluate(
                "[...document.querySelectorAll('a[href]')].filter(a => !/^(https?:|mailto:|\\/|#)/.test(a.getAttribute('href'))).length"
            )
            == 0
        )
        assert page.locator("img").count() == 0
        unharmed(page)
        if "Please look at this" in page.content():
            expect(page.get_by_text("<script>window.__pwned").first).to_be_visible()  # shown as the text it is
            shot(page, "planted")
    page.goto("/search?q=pwned")
    expect(page.locator("a.hit-link").first).to_be_visible()
    unharmed(page)
