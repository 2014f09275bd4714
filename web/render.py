"""Captured content as HTML that cannot run: Markdown, highlights, JSON, and the small formats pages show.

Everything here is written by models, by tools, or by whoever's text reached
them, so nothing of it is trusted:

- Markdown goes through markdown-it-py (CommonMark, plus tables and
  strikethrough) with HTML off: raw HTML in a message shows as the text it
  is, so a reader sees the ``<script>`` a message carried instead of losing
  it. Links keep only http(s), mailto and relative targets (`allowed_link`,
  checked after markdown-it has normalised the URL, entities and case
  included) and get ``rel="nofollow noopener noreferrer"``. Images show only
  as ``data:image/{png,jpeg,gif,webp}``; any other source shows its alt text
  and address instead, since a remote image would tell its server who read
  the conversation (the CSP would block it too).
- Everything else is escaped by Jinja's autoescape; the few ``Markup`` values
  made here are built from escaped parts only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markupsafe import Markup, escape

# ts_headline's marks: characters captured text is unlikely to hold; if it
# does, the worst is a stray highlight, since the text is escaped first.
MARK_START = "\ue000"
MARK_STOP = "\ue001"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_LINK_SCHEMES = frozenset({"http", "https", "mailto"})
_IMAGE_DATA = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


def allowed_link(url: str) -> bool:
    """http(s), mailto, no scheme at all (relative, fragment), or an inline raster image."""
    scheme = _SCHEME.match(url.strip())
    return scheme is None or scheme[1].lower() in _LINK_SCHEMES or _IMAGE_DATA.match(url) is not None


def _link_open(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
    return renderer.renderToken(tokens, idx, options, env)


def _image(renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    token = tokens[idx]
    source = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    if _IMAGE_DATA.match(source):
        return f'<img src="{escape(source)}" alt="{escape(alt)}">'
    return f'<span class="image-link">[image: {escape(alt)}] <code>{escape(source)}</code></span>'


def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    parser.enable(["table", "strikethrough"])
    parser.validateLink = allowed_link  # type: ignore[method-assign]
    parser.add_render_rule("link_open", _link_open)
    parser.add_render_rule("image", _image)
    return parser


_PARSER = _parser()


# Text with none of these, and no line that could open a block, is paragraphs
# of plain text whatever a Markdown parser makes of it: `plain_paragraphs`
# renders it without one (most prompts and short replies; markdown-it costs
# ~0.1 ms a call even for a word).
_INLINE_SYNTAX = re.compile(r"[`*_\[\]<>!\\&~|]|  \n")
_BLOCK_START = re.compile(r"^(?: {0,3}(?:[#>+=*-]|\d+[.)])| {4}|\t)", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t]*\n\s*")


def is_plain(text: str) -> bool:
    return _INLINE_SYNTAX.search(text) is None and _BLOCK_START.search(text) is None


def plain_paragraphs(text: str) -> str:
    """What CommonMark makes of plain text: a paragraph per blank-line-separated run, lines trimmed."""
    paragraphs = (p for p in _BLANK_LINES.split(text.strip()) if p.strip())
    return "".join("<p>" + "\n".join(line.strip() for line in str(escape(p)).split("\n")) + "</p>\n" for p in paragraphs)


def markdown(text: str) -> Markup:
    """Captured Markdown as HTML: raw HTML shown as text, only safe links, no remote images."""
    return Markup(plain_paragraphs(text) if is_plain(text) else _PARSER.render(text))


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


def cost(value: Decimal | None, unpriced: int | bool | None = None, priced: Decimal | None = None) -> str:
    """US dollars, to the cent above a dollar and to a hundredth of a cent below. A cost that includes
    requests without a price is unknown, never a number: ``unknown``, with the part that was priced."""
    if unpriced:
        part = value if priced is None else priced
        return "unknown" + (f" ({dollars(part)} priced)" if part else "")
    return "-" if value is None else dollars(value)


def dollars(value: Decimal) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"


def when(value: datetime | None) -> str:
    """A timestamp in UTC to the second, as the tables hold them."""
    return "" if value is None else value.isoformat(" ", "seconds")[:19]


def size(count: int) -> str:
    if count < 1024:
        return f"{count:,} B"
    if count < 1024 * 1024:
        return f"{count / 1024:,.1f} KB"
    return f"{count / 1024 / 1024:,.1f} MB"


def filters() -> dict[str, Any]:
    """The Jinja filters the templates use."""
    return {
        "markdown": markdown,
        "pretty_json": pretty_json,
        "number": number,
        "ms": milliseconds,
        "cost": cost,
        "when": when,
        "size": size,
        "highlight": highlight,
    }
