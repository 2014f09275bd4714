"""Captured text as HTML: Markdown without HTML, links and images filtered, highlights escaped."""

from __future__ import annotations

import hashlib
import random
import re
from decimal import Decimal

import pytest

from bench.winni_bench import prose
from tests.claude_samples import load_samples
from tests.test_readme import ROOT
from web.render import MARK_START, MARK_STOP, _PARSER, allowed_link, cost, highlight, is_plain, markdown, plain_paragraphs


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        "x <img src=x onerror=alert(1)> y",
        '<div onmouseover="alert(1)">hi</div>',
        '<a href="javascript:alert(1)">a</a>',
        "<!-- comment --><iframe src=//evil>",
    ],
)
def test_raw_html_shows_as_text(text: str) -> None:
    html = str(markdown(text))
    assert "<script" not in html and "<img" not in html and "<div" not in html and "<a " not in html and "<iframe" not in html
    assert "&lt;" in html


@pytest.mark.parametrize(
    "link",
    [
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "&#106;avascript:alert(1)",
        "  javascript:alert(1)",
        "vbscript:x",
        "data:text/html,<script>x</script>",
        "file:///etc/passwd",
        "ftp://host/x",
    ],
)
def test_links_to_anything_but_the_web_are_left_as_text(link: str) -> None:
    html = str(markdown(f"[click]({link}) and <{link}>"))
    assert "<a " not in html and "href" not in html


def test_web_links_are_kept_and_marked_nofollow() -> None:
    html = str(markdown("[docs](https://example.com/a?b=1&c=2) [m](mailto:a@b.c) [here](#m-3) [rel](/session?key=x)"))
    assert html.count('rel="nofollow noopener noreferrer"') == 4
    assert 'href="https://example.com/a?b=1&amp;c=2"' in html and 'href="#m-3"' in html
    assert allowed_link("https://x") and allowed_link("/a") and allowed_link("#b") and not allowed_link("javascript:x")


def test_only_inline_raster_images_show() -> None:
    assert '<img src="data:image/png;base64,iVBOR" alt="chart">' in str(markdown("![chart](data:image/png;base64,iVBOR)"))
    remote = str(markdown("![pixel](https://tracker.example/p.gif)"))
    assert "<img" not in remote and "[image: pixel]" in remote and "https://tracker.example/p.gif" in remote
    assert "<img" not in str(markdown("![svg](data:image/svg+xml;base64,PHN2Zz4=)"))


def captured_texts() -> list[str]:
    """Text blocks of the Claude Code samples, and generated prose."""
    texts = []
    for sample in load_samples():
        body = sample["body"] if isinstance(sample["body"], dict) else {}
        for message in body.get("messages", []):
            content = message["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            texts += [b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    rng = random.Random(5)
    texts += [prose(rng, rng.randint(8, 800)) for _ in range(200)]
    texts += ["Question 4", "It printed 3.", "one\n\ntwo  \nthree", "  indented once\n\n\n  then again  ", "a (b): c; 'd' \"e\""]
    return texts


def test_plain_text_skips_the_parser_and_renders_as_commonmark_does() -> None:
    texts = captured_texts()
    plain = [t for t in texts if is_plain(t)]
    assert len(plain) > 200 and len(plain) < len(texts)  # the samples hold real Markdown too
    for text in plain:
        assert plain_paragraphs(text).replace("&#39;", "'").replace("&#34;", '"') == _PARSER.render(text).replace(
            "&quot;", '"'
        ), text
    for text in ("- a list", "1. first", "# heading", "    code", "a *b*", "x\n===", "> quote", "a  \nb", "[x](y)", "a & b"):
        assert not is_plain(text), text


def test_highlights_escape_the_text_around_the_marks() -> None:
    shown = str(highlight(f"<b>bold</b> {MARK_START}word{MARK_STOP} & more"))
    assert shown == "&lt;b&gt;bold&lt;/b&gt; <mark>word</mark> &amp; more"


def test_costs_say_when_something_was_not_priced() -> None:
    assert (cost(None), cost(None, 2), cost(Decimal("0.00123")), cost(Decimal("12.346"), 1)) == (
        "-",
        "unknown",
        "$0.0012",
        "unknown ($12.35 priced)",
    )


def test_the_vendored_chart_library_is_the_one_its_readme_names() -> None:
    vendor = ROOT / "web" / "static" / "vendor"
    listed = re.search(r"sha256 `([0-9a-f]{64})`", (vendor / "README.md").read_text())[1]
    assert hashlib.sha256((vendor / "chart.umd.min.js").read_bytes()).hexdigest() == listed
    assert "MIT License" in (vendor / "chart.js-LICENSE.md").read_text()
