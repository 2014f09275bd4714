"""Captured content as HTML that cannot run: Markdown, highlights, JSON, and the small formats pages show.

Everything here is written by models, by tools, or by whoever's text reached
them, so nothing of it is trusted:

- Markdown goes through cmark-gfm (`cmarkgfm`, GitHub's C parser) in its safe
  mode: raw HTML is left out (``<!-- raw HTML omitted -->``) and
  ``javascript:``, ``vbscript:``, ``file:`` and ``data:`` links are emptied.
  On top of that, `_allow_links` keeps only http(s), mailto and relative
  links, and images only as ``data:image/{png,jpeg,gif,webp}`` (a remote image
  would tell its server who read the conversation; the CSP blocks it too).
  cmark escapes every text and attribute it writes, so its output can be
  filtered by pattern. It renders a 2,000-message conversation's text in
  ~30 ms where markdown-it-py took ~250 ms (measured on Claude Code replies).
- Everything else is escaped by Jinja's autoescape; the few ``Markup`` values
  made here are built from escaped parts only.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

import cmarkgfm
import orjson
from cmarkgfm.cmark import Options
from markupsafe import Markup, escape

# ts_headline's marks: characters captured text is unlikely to hold; if it
# does, the worst is a stray highlight, since the text is escaped first.
MARK_START = "\ue000"
MARK_STOP = "\ue001"

_OPTIONS = Options.CMARK_OPT_VALIDATE_UTF8 | Options.CMARK_OPT_FOOTNOTES
_ATTRIBUTE = re.compile(r'<(a|img) ([^>]*?)(href|src)="([^"]*)"')
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def markdown(text: str) -> Markup:
    """Captured Markdown as HTML with no raw HTML, no script links and no remote images."""
    return Markup(_allow_links(cmarkgfm.github_flavored_markdown_to_html(text, options=_OPTIONS)))


def allowed_link(url: str) -> bool:
    """http(s), mailto, or no scheme at all (relative, fragment); cmark has percent-encoded what it wrote."""
    scheme = _SCHEME.match(url)
    return scheme is None or scheme[1].lower() in _LINK_SCHEMES


def _allow_links(html: str) -> str:
    def check(found: re.Match[str]) -> str:
        tag, before, attribute, url = found.groups()
        keep = _IMAGE_DATA.match(url) is not None if tag == "img" else allowed_link(url)
        extra = 'rel="nofollow noopener noreferrer" ' if tag == "a" else ""
        return f'<{tag} {extra}{before}{attribute}="{url if keep else ""}"'

    return _ATTRIBUTE.sub(check, html)


def highlight(headline: str) -> Markup:
    """ts_headline's text, escaped, with its marks turned into <mark> elements."""
    escaped = str(escape(headline))
    return Markup(escaped.replace(MARK_START, "<mark>").replace(MARK_STOP, "</mark>"))


def pretty_json(value: Any) -> str:
    """Indented JSON for reading; non-ASCII kept as it is."""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def number(value: int | float | None) -> str:
    return "" if value is None else f"{value:,.0f}"


def milliseconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f} ms" if value < 10_000 else f"{value / 1000:,.1f} s"


def cost(value: Decimal | None, unpriced: int | bool | None = None) -> str:
    """US dollars, to the cent above a dollar and to a hundredth of a cent below; - when nothing was priced."""
    mark = "*" if unpriced else ""
    if value is None:
        return "-" + mark
    return (f"${value:,.2f}" if value >= 1 else f"${value:.4f}") + mark


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second, as the tables hold them."""
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def size(count: int) -> str:
    if count < 1024:
        return f"{count:,} B"
    if count < 1024 * 1024:
        return f"{count / 1024:,.1f} KB"
    return f"{count / 1024 / 1024:,.1f} MB"


def filters() -> dict[str, Any]:
    """The Jinja filters the templates use."""
    return {
        "markdown": markdown, "pretty_json": pretty_json, "number": number, "ms": milliseconds,
        "cost": cost, "when": when, "size": size, "highlight": highlight,
    }
