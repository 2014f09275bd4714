"""Removing secrets before anything leaves the proxy.

Header values are replaced whole; bodies are scanned for every rule at once
by one automaton (Hyperscan where it has wheels, RE2's multi-pattern set
elsewhere), which only names the rules that may match: those alone run their
own pattern to replace what they find, so a body with no secret costs one
pass whatever the number of rules.

A secret is removed in every form it is stored in, not only as the bytes came:
percent-encoded (``Bearer%20...``), behind JSON ``\\u`` escapes (the topic and
the database hold the body decoded), and split across text blocks or stream
deltas that the database joins. Every function returns the names of the rules
that fired, so an event says what was taken out.

A pattern's anchors (``^``, ``$``, ``\\A``, ``\\Z``) mark the ends of the value it is
matched against: each header value and field, each string of a JSON body (keys too,
decoded) and the text a run of text blocks or of a block's stream deltas joins into,
and a body that is not JSON as a whole.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl, quote_from_bytes, unquote_to_bytes, urlencode

import orjson

from common.config import CREDENTIAL_PARAMS
from common.documents import parse_json
from proxy.sse import SSEEvent, SSEParser

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})


@dataclass(frozen=True)
class Rule:
    """A secret format.

    A pattern with a group named ``secret`` loses only that group (a URL keeps its
    scheme, user and host, and loses its password); any other loses its whole match.

    `clue` lets `redact_json` scan a JSON body's bytes as they came instead of the body
    written anew: ``b""`` for a rule no match of which holds a quote (so each lies inside
    one JSON string), other bytes for one whose match may span strings but always holds
    them (none a character JSON escapes); None, what a custom rule has, when neither is known.
    """

    name: str
    pattern: re.Pattern[bytes]
    clue: bytes | None = None

    @property
    def scanned(self) -> bytes:
        """The pattern the multi-line automaton looks for: `\\A` and `\\Z` (where the subject begins and
        ends) read as `^` and `$`, so that values scanned joined by newlines are each scanned as if alone
        for those too. It finds more than the pattern, never less: the automaton only names a rule
        to run, and its own pattern then runs on each value alone."""
        return _TOKENS.sub(lambda token: _LINE_ANCHORS.get(token[0], token[0]), self.pattern.pattern)

    @property
    def anchored(self) -> bool:
        """Whether the pattern holds an anchor (`^`, `$`, `\\A`, `\\Z` outside a character class): one that
        does is meant to match a whole value, so a JSON body's strings are matched against it one by one."""
        return any(token in _ANCHORS for token in _TOKENS.findall(self.pattern.pattern))

    @property
    def placeholder(self) -> bytes:
        return b"[REDACTED:" + self.name.encode() + b"]"

    def span(self, match: re.Match[bytes]) -> tuple[int, int]:
        """Where in ``match`` the secret is."""
        return match.span("secret") if "secret" in self.pattern.groupindex else match.span()

    def replace(self, body: bytes) -> tuple[bytes, int]:
        if "secret" not in self.pattern.groupindex:
            return self.pattern.subn(self.placeholder, body)

        def keep_around(match: re.Match[bytes]) -> bytes:
            start, end = match.span("secret")
            whole = match[0]
            return whole[: start - match.start()] + self.placeholder + whole[end - match.start() :]

        return self.pattern.subn(keep_around, body)


# A pattern's tokens as Python's `re` reads them: an escape, a character class, or one character.
_TOKENS = re.compile(rb"\\.|\[\^?\]?(?:\\.|[^\]\\])*\]|.", re.DOTALL)
_LINE_ANCHORS = {b"\\A": b"^", b"\\Z": b"$"}
_ANCHORS = frozenset({b"^", b"$", b"\\A", b"\\Z"})


def _rule(name: str, pattern: str, clue: bytes | None = None) -> Rule:
    return Rule(name, re.compile(pattern.encode(), re.DOTALL), clue)


# scheme://user:password@host: the user may be empty (redis://:password@host); a password
# holds no whitespace, quote, slash, '?', '#' or '@' (RFC 3986 wants those percent-encoded).
_URL_PASSWORD = r"://[^\s:/?#@\[\]\"'<>\\]*:(?P<secret>[^\s/?#@\"'<>\\]+)@"

# Between "Bearer" and its token: whitespace as sent, or as a JSON string writes it.
_GAP = r"(?:\s|\\[nrt])+"

BUILTIN_RULES: tuple[Rule, ...] = (
    _rule("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}", b""),
    _rule("openai_key", r"sk-(?:proj-)?[A-Za-z0-9_\-]{32,}", b""),
    _rule("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", b""),
    _rule("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})", b""),
    _rule("slack_token", r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", b""),
    _rule("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", b""),
    _rule("stripe_key", r"\b[sr]k_live_[0-9A-Za-z]{16,}", b""),
    _rule("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", b""),
    _rule("private_key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", b"PRIVATE KEY-----"),
    _rule("bearer_token", r"(?i:bearer)" + _GAP + r"[A-Za-z0-9_\-\.=+/]{20,}", b""),
    _rule("url_password", _URL_PASSWORD, b""),
)


def custom_rules(patterns: Iterable[str]) -> tuple[Rule, ...]:
    """Rules from the patterns of `KGB_REDACT_PATTERNS_FILE`, scanned in the same pass as the built-in ones."""
    return tuple(_rule(f"custom_{i}", pattern) for i, pattern in enumerate(patterns, start=1))


# The escapes orjson does not write: "\/" (it writes "/"), and any "\u" but that of a control character with no
# short escape, in lower case (U+0000 to U+001F but for \b \t \n \f \r)
_ESCAPED_AFRESH = rb"\\(?:/|u(?:[^0]|0[^0]|00[^01]|000[^0-7bef]|001[^0-9a-f]))"

Scan = Callable[[bytes], set[int]]
Engine = Callable[[Sequence[bytes]], Scan]


def hyperscan_engine(patterns: Sequence[bytes]) -> Scan:
    """One Hyperscan database of every pattern, in prefilter mode: it may name a rule
    that does not match (its own pattern then finds nothing), never miss one that does.
    Multi-line, so that values scanned joined by newlines (`redact_headers`, `redact_fields`)
    are each scanned as if alone: an anchored pattern (``^...$``) matches at each line."""
    import hyperscan

    database = hyperscan.Database()
    flags = hyperscan.HS_FLAG_DOTALL | hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_MULTILINE
    database.compile(
        expressions=list(patterns), ids=list(range(len(patterns))), elements=len(patterns), flags=[flags] * len(patterns)
    )

    local = threading.local()  # a scratch space serves one scan at a time: one per thread

    def scan(data: bytes) -> set[int]:
        scratch = getattr(local, "scratch", None)
        if scratch is None:
            scratch = local.scratch = hyperscan.Scratch(database)
        found: set[int] = set()
        database.scan(data, match_event_handler=lambda rule, *_: found.add(rule), scratch=scratch)
        return found

    return scan


def re2_engine(patterns: Sequence[bytes]) -> Scan:
    """RE2's multi-pattern set, one linear pass: for platforms Hyperscan has no wheel for;
    multi-line as Hyperscan's is."""
    import re2

    options = re2.Options()
    options.dot_nl = True
    patterns_set = re2.Set.SearchSet(options)
    for pattern in patterns:
        patterns_set.Add(b"(?m)" + pattern)
    patterns_set.Compile()
    return lambda data: set(patterns_set.Match(data) or ())


def default_engine() -> Engine:
    try:
        import hyperscan  # noqa: F401
    except ImportError:
        return re2_engine
    return hyperscan_engine


def _readable(engine: Engine, pattern: bytes) -> bool:
    try:
        engine([pattern])
    except Exception:  # noqa: BLE001 - each engine raises its own error for a pattern it cannot read
        return False
    return True


class Matcher:
    """Which of `rules` may match a body, found in one pass for all of them.

    A custom pattern the engine cannot read (a backreference RE2 refuses, say)
    is not refused: it runs on its own on every body, as every rule once did.
    """

    def __init__(self, rules: tuple[Rule, ...], engine: Engine | None = None) -> None:
        engine = engine or default_engine()
        self.rules = rules
        self._scanned = [i for i, rule in enumerate(rules) if _readable(engine, rule.scanned)]
        self._always = set(range(len(rules))) - set(self._scanned)
        self._scan = engine([rules[i].scanned for i in self._scanned]) if self._scanned else None
        # an anchored rule matches a JSON string alone, never the JSON that writes it between quotes
        self.by_string = any(rule.anchored for rule in rules)
        self._written: Scan | None = None  # `clean_as_written`'s one pass, when every rule has a clue (no custom one)
        self._percent = len(rules) + 1  # what that pass names for a "%"
        if all(rule.clue is not None for rule in rules) and not self._always:
            unclear = [_ESCAPED_AFRESH, b"%", *(re.escape(rule.clue) for rule in rules if rule.clue)]
            self._written = engine([rule.scanned for rule in rules] + unclear)

    def candidates(self, data: bytes) -> list[Rule]:
        """The rules to run on `data`, in their order (an earlier rule wins an overlap)."""
        found = self._scan(data) if self._scan is not None and data else set()
        if not found and not self._always:
            return []  # most data: no rule to run, nothing to sort
        named = self._always | {self._scanned[i] for i in found}
        return [self.rules[i] for i in sorted(named)]

    def clean_as_written(self, body: bytes) -> bool:
        """Whether no rule matches the JSON `body` as orjson writes it anew, nor what a percent-encoded run
        of it decodes to, known from its bytes as they came (False when they cannot tell).

        Each string of a body with no escape orjson does not write is written anew byte for byte, and the
        body written anew holds only those strings (fewer, and moved, if a key came twice) between bytes no
        rule with a clue matches: one whose match lies within a string matches it only if it matches the
        body, one spanning strings only if its clue is in the body; a percent-encoded run lies within a
        string too. One pass finds the rules, the escapes, the clues and any ``%`` (searched for on their
        own, an escape costs more than the pass: a body holds many backslashes); only a ``%`` leaves the
        runs to decode."""
        if self._written is None:
            return False
        found = self._written(body)
        if found == {self._percent}:
            return not _redact_percent_runs(body, self.rules)[1]
        return not found


@lru_cache(maxsize=16)
def _compiled(rules: tuple[Rule, ...]) -> Matcher:
    return Matcher(rules)


_last: tuple[Sequence[Rule], Matcher] | None = None


def matcher(rules: Sequence[Rule]) -> Matcher:
    """The settings build their rules once, so their automaton is compiled once. The rules last asked for
    are known by identity: finding them by value hashes every rule's compiled pattern, a few microseconds
    per field redacted, and an event redacts a dozen."""
    global _last
    last = _last
    if last is not None and last[0] is rules:
        return last[1]
    found = _compiled(tuple(rules))
    if type(rules) is tuple:  # immutable: what it matches cannot change under the same identity
        _last = (rules, found)  # holds `rules`, so no other tuple can take its id
    return found


def _replace(body: bytes, rules: Sequence[Rule]) -> tuple[bytes, list[str]]:
    fired = []
    for rule in rules:
        body, count = rule.replace(body)
        if count:
            fired.append(rule.name)
    return body, fired


def redact_body(body: bytes, rules: Sequence[Rule]) -> tuple[bytes, list[str]]:
    """Replace every match with `[REDACTED:<rule>]`, which keeps a JSON body valid JSON;
    a percent-encoded secret is found decoded and written back encoded."""
    body, fired = _replace(body, matcher(rules).candidates(body))
    if b"%" in body:
        body, decoded_fired = _redact_percent_runs(body, rules)
        fired += decoded_fired
    return body, fired


_PERCENT_RUN = re.compile(rb"%[0-9A-Fa-f]{2}(?:[\w.~+\-]|%[0-9A-Fa-f]{2})*")
_URL_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.~+-")


def _redact_percent_runs(body: bytes, rules: Sequence[Rule]) -> tuple[bytes, list[str]]:
    """Each run of URL characters holding a `%XX` escape, read decoded (`+` as a space). The runs are
    scanned decoded all at once first, joined by newlines as `redact_fields` joins fields, and one by one
    only when that scan names a rule: a body of URLs holds hundreds, and a scan costs more than a run."""
    found = matcher(rules)
    if not found.candidates(b"\n".join(_decoded_run(body, match, 0)[1] for match in _PERCENT_RUN.finditer(body))):
        return body, []
    fired: list[str] = []
    parts, done = [], 0
    for match in _PERCENT_RUN.finditer(body):
        start, decoded = _decoded_run(body, match, done)
        clean, hits = _replace(decoded, found.candidates(decoded))
        if hits:
            parts += [body[done:start], quote_from_bytes(clean, safe="[]:").encode()]
            done = match.end()
            fired += hits
    return (b"".join([*parts, body[done:]]) if fired else body), fired


def _decoded_run(body: bytes, match: re.Match[bytes], done: int) -> tuple[int, bytes]:
    """Where the run of `match` starts (the URL characters before its first escape, back to `done`), and it decoded."""
    start = match.start()
    while start > done and body[start - 1] in _URL_SAFE:
        start -= 1
    return start, unquote_to_bytes(body[start : match.end()].replace(b"+", b" "))


def redact_text(text: str, rules: Sequence[Rule]) -> tuple[str, list[str]]:
    redacted, fired = redact_body(text.encode(), rules)
    return (redacted.decode(errors="replace") if fired else text), fired


def redact_optional(text: str | None, rules: Sequence[Rule], fired: list[str]) -> str | None:
    """A field that may be absent, redacted, its rules added to `fired`."""
    if not text:
        return text
    clean, hits = redact_text(text, rules)
    fired.extend(hits)
    return clean


def redact_fields(texts: Sequence[str | None], rules: Sequence[Rule]) -> tuple[list[str | None], list[str]]:
    """Several short fields, each redacted as `redact_optional` does, found clean in one scan of them
    all joined by newlines (the usual case: a scan per field cost more than its building), and redacted
    one by one only when that scan names a rule or sees a ``%``. The automaton is multi-line, and a
    newline is no word character, so each field is scanned there as if alone."""
    joined = "\n".join([text for text in texts if text]).encode()
    if not matcher(rules).candidates(joined) and b"%" not in joined:
        return list(texts), []
    fired: list[str] = []
    return [redact_optional(text, rules, fired) for text in texts], fired


def redact_json(body: bytes, rules: Sequence[Rule], document: Any = None) -> tuple[bytes, list[str]]:
    """A JSON body redacted as a JSON reader sees it (see `redact_document`); only a body
    holding a secret is written anew, with orjson; any other keeps its bytes. `document`
    is the body already parsed, if the caller has it; a body that is not JSON goes to
    `redact_body`."""
    document = parse_json(body) if document is None else document
    if document is None:
        return redact_body(body, rules)
    try:
        cleaned, fired = redact_document(document, rules, body)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes (254 levels; it reads 1024)
        return redact_body(body, rules)
    return (orjson.dumps(cleaned), fired) if fired else (body, [])


def redact_document(document: Any, rules: Sequence[Rule], written: bytes | None = None) -> tuple[Any, list[str]]:
    """A parsed JSON document with every string redacted decoded, and every run of text
    blocks redacted as the one text it joins into (first, so that a secret's first half,
    which may match alone, does not keep the rest). May change `document` in place;
    raises `orjson.JSONEncodeError` for one nested too deep for orjson to write.

    The strings are looked at only when a rule may match one of them: when one matches the
    document as orjson writes it (`_written_may_match`), or, once a rule is anchored, one of
    its strings alone (`_strings_may_match`); `written`, the bytes it was read from, saves
    that when they tell it is clean (`Matcher.clean_as_written`), as most bodies' do."""
    found = matcher(rules)
    fired: list[str] = []
    runs = list(_text_runs(document))
    if runs and found.candidates(b"\n".join("".join(block["text"] for block in run).encode() for run in runs)):
        for run in runs:
            texts, hits = redact_pieces([block["text"] for block in run], rules)
            for block, text in zip(run, texts, strict=True):
                block["text"] = text
            fired += hits
    if not fired and written is not None and found.clean_as_written(written):
        return document, fired
    if _strings_may_match(document, found, rules) if found.by_string else _written_may_match(document, found, rules):
        document, hits = _redact_strings(document, rules)
        fired += hits
    return document, fired


def _written_may_match(document: Any, found: Matcher, rules: Sequence[Rule]) -> bool:
    """Whether a rule matches `document` as orjson writes it, one pass in C: the test for rules without
    anchors, which match a string inside its quotes as they match it alone, but for what orjson escapes
    (a quote, a newline); a match may also span strings."""
    canonical = orjson.dumps(document)
    return bool(found.candidates(canonical) or b"%" in canonical) and bool(redact_body(canonical, rules)[1])


def _strings_may_match(document: Any, found: Matcher, rules: Sequence[Rule]) -> bool:
    """Whether a rule matches a string of `document` (a key too) on its own, as `_redact_strings` reads it:
    an anchored rule's anchors mark where each string begins and ends, and it sees the string decoded (a
    quote, a newline, a `\\u` escape read), neither of which the document as written shows. The strings
    joined by newlines are scanned at once (the automaton reads each as if alone); only the rules it names
    run, string by string."""
    strings = _parts(document)[1]
    joined = "\n".join(strings).encode()
    if any(rule.pattern.search(text.encode()) for rule in found.candidates(joined) for text in strings):
        return True
    return b"%" in joined and bool(_redact_percent_runs(joined, rules)[1])


def _parts(document: Any) -> tuple[list[Any], list[str]]:
    """Each dict and list of `document`, the outer first, and each string, keys too: one walk, a loop, not
    recursion (orjson reads documents nested deeper than Python recurses), and no generator, whose cost per
    node made the walk over a request's several hundred strings half as slow again."""
    containers, strings = [], [document] if type(document) is str else []
    stack = [document] if type(document) in (dict, list) else []
    while stack:
        node = stack.pop()
        containers.append(node)
        if type(node) is dict:
            strings += node
        for value in node.values() if type(node) is dict else node:
            if type(value) is str:
                strings.append(value)
            elif type(value) in (dict, list):
                stack.append(value)
    return containers, strings


def _redact_strings(document: Any, rules: Sequence[Rule]) -> tuple[Any, list[str]]:
    """Each string of `document` (keys too) redacted on its own, in place: a match across
    strings (a key's BEGIN in one field, its END in another) must not eat the JSON between
    them."""
    if type(document) is str:
        return redact_text(document, rules)
    fired: list[str] = []
    for node in _parts(document)[0]:
        for key, value in list(node.items() if type(node) is dict else enumerate(node)):
            if type(value) is str:
                clean, hits = redact_text(value, rules)
                if hits:
                    node[key], fired = clean, fired + hits
        if type(node) is dict:
            renamed = {key: redact_text(key, rules) for key in node}
            if any(hits for _, hits in renamed.values()):
                fired += [name for _, hits in renamed.values() for name in hits]
                items = [(renamed[key][0], value) for key, value in node.items()]
                node.clear()
                node.update(items)
    return document, fired


def _text_runs(document: Any) -> Iterator[list[dict[str, Any]]]:
    """Runs of two or more consecutive text blocks, in a system prompt, a message or a tool result."""
    for blocks in _block_lists(document):
        run: list[dict[str, Any]] = []
        for block in blocks:
            if type(block) is dict and block.get("type") == "text" and type(block.get("text")) is str:
                run.append(block)
                continue
            if len(run) > 1:
                yield run
            run = []
        if len(run) > 1:
            yield run


def _block_lists(document: Any) -> Iterator[list[Any]]:
    """The lists of content blocks that hold two or more blocks (a run needs two)."""
    if type(document) is not dict:
        return
    messages = document.get("messages")
    for holder in [document, *(messages if type(messages) is list else ())]:
        for blocks in (holder.get("system"), holder.get("content")) if type(holder) is dict else ():
            if type(blocks) is not list:
                continue
            if len(blocks) > 1:
                yield blocks
            for block in blocks:
                inner = block.get("content") if type(block) is dict and block.get("type") == "tool_result" else None
                if type(inner) is list and len(inner) > 1:
                    yield inner


def redact_pieces(pieces: Sequence[str], rules: Sequence[Rule]) -> tuple[list[str], list[str]]:
    """Pieces of one text (stream deltas, text blocks) redacted as the joined text: a secret
    split across pieces loses each of its parts, the placeholder standing in the first."""
    encoded = [piece.encode() for piece in pieces]
    joined = b"".join(encoded)
    spans = _spans(joined, matcher(rules).candidates(joined))
    if not spans:
        return list(pieces), []
    result, offset = [], 0
    for piece in encoded:
        result.append(_cut(piece, offset, spans).decode(errors="replace"))
        offset += len(piece)
    return result, sorted({rule.name for _, _, rule in spans})


def _spans(data: bytes, rules: Sequence[Rule]) -> list[tuple[int, int, Rule]]:
    """Where each rule's secrets are, overlaps merged (the earlier rule names the merge)."""
    found = sorted(((*rule.span(match), rule) for rule in rules for match in rule.pattern.finditer(data)), key=lambda s: s[0])
    merged: list[tuple[int, int, Rule]] = []
    for start, end, rule in found:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), merged[-1][2])
        elif end > start:
            merged.append((start, end, rule))
    return merged


def _cut(piece: bytes, offset: int, spans: Sequence[tuple[int, int, Rule]]) -> bytes:
    """`piece` (at `offset` in the joined text) without the spans' bytes; a span starting in it leaves its placeholder."""
    kept, position = [], offset
    for start, end, rule in spans:
        if end <= position or start >= offset + len(piece):
            continue
        kept.append(piece[position - offset : max(start, position) - offset])
        if start >= offset:
            kept.append(rule.placeholder)
        position = min(end, offset + len(piece))
    kept.append(piece[position - offset :])
    return b"".join(kept)


def redact_stream(body: bytes, rules: Sequence[Rule]) -> tuple[bytes, list[str]]:
    """An event stream rewritten event by event: each event's JSON decoded and redacted,
    and the deltas of each content block redacted as the text they join into; a tool's
    streamed input also as the JSON that text is (`_redact_escaped_input`).

    For a stream whose reassembled message or error held a secret: the raw bytes
    may hold it escaped or in halves. Other streams keep their bytes
    (`redact_body` suffices for them).
    """
    parser = SSEParser()
    events = parser.feed(body.decode(errors="replace")) + parser.flush()
    documents = [parse_json(event.data) for event in events]
    fired: list[str] = []
    for deltas in _deltas_by_block(documents).values():
        texts, hits = redact_pieces([delta[key] for delta, key in deltas], rules)
        if all(key == "partial_json" for _, key in deltas):
            texts, decoded_hits = _redact_escaped_input(texts, rules)
            hits += decoded_hits
        for (delta, key), text in zip(deltas, texts, strict=True):
            delta[key] = text
        fired += hits
    for i, document in enumerate(documents):
        if document is not None:
            try:
                documents[i], hits = redact_document(document, rules)
            except orjson.JSONEncodeError:  # too deep to write back: the event's text is redacted as it came
                documents[i], hits = None, []
            fired += hits
    rendered = b"".join(_render(event, document, rules, fired) for event, document in zip(events, documents, strict=True))
    return rendered, fired


_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def _redact_escaped_input(pieces: list[str], rules: Sequence[Rule]) -> tuple[list[str], list[str]]:
    """A tool's streamed input, already redacted as the JSON text its pieces join into, redacted
    again as a JSON reader sees it, should that find more: a secret behind `\\u` escapes, which the
    reassembled message holds decoded. The input written anew stands in the first piece, the others
    empty (every event kept). Input cut before its end (a stream broken mid-block) is not JSON: its
    text is redacted with its needless escapes read (`_unescaped`), which is that text as JSON still.
    Input without a backslash has nothing a reader decodes, and keeps its pieces."""
    joined = "".join(pieces)
    if "\\" not in joined:
        return pieces, []
    written, fired = _redact_input(joined, rules)
    return ([written] + [""] * (len(pieces) - 1), fired) if fired else (pieces, [])


def _redact_input(text: str, rules: Sequence[Rule]) -> tuple[str, list[str]]:
    """A tool's input JSON text redacted as a request body is, or, when it is not JSON (cut) or is
    nested too deep for orjson to write, as its text with its needless escapes read."""
    document = parse_json(text.encode())
    if document is not None:
        try:
            cleaned, fired = redact_document(document, rules)
            return orjson.dumps(cleaned).decode(), fired
        except orjson.JSONEncodeError:
            pass
    return redact_text(_unescaped(text), rules)


_ESCAPE = re.compile(r"\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})|u([0-9a-fA-F]{4})|/|.)", re.DOTALL)


def _unescaped(text: str) -> str:
    """JSON text with each escape a string needs not (`\\/`, a `\\u` escape of a character neither
    a quote, a backslash, a control character nor half a surrogate pair) read: the same JSON, spelled
    as a pattern sees a secret. Each escape is read whole, so the `u` after an escaped backslash stays."""

    def read(escape: re.Match[str]) -> str:
        high, low, code = escape.group(1, 2, 3)
        if high:
            return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00)
        if escape[0] == "\\/":
            return "/"
        char = chr(int(code, 16)) if code else ""
        return char if char and char >= " " and char not in '"\\' and not "\ud800" <= char <= "\udfff" else escape[0]

    return _ESCAPE.sub(read, text)


def _deltas_by_block(documents: Sequence[Any]) -> dict[Any, list[tuple[dict[str, Any], str]]]:
    blocks: dict[Any, list[tuple[dict[str, Any], str]]] = {}
    for document in documents:
        delta = document.get("delta") if isinstance(document, dict) and document.get("type") == "content_block_delta" else None
        if not isinstance(delta, dict):
            continue
        kind = delta.get("type")
        key = _DELTA_TEXT.get(kind) if isinstance(kind, str) else None
        if key and isinstance(delta.get(key), str):
            blocks.setdefault(document.get("index"), []).append((delta, key))
    return blocks


def _render(event: SSEEvent, document: Any, rules: Sequence[Rule], fired: list[str]) -> bytes:
    data = orjson.dumps(document).decode() if document is not None else redact_optional(event.data, rules, fired) or ""
    lines = [f"event: {event.event}"] if event.event != "message" else []
    lines += [f"data: {line}" for line in data.split("\n")]
    lines += [f"id: {event.id}"] if event.id else []
    return ("\n".join(lines) + "\n\n").encode()


def redact_headers(
    headers: Iterable[tuple[str, str]], extra_names: frozenset[str], rules: Sequence[Rule]
) -> tuple[list[dict[str, str]], list[str]]:
    """Secret headers lose their value; the rest are scanned like a body (a token can hide anywhere).

    The automaton runs once over all the values together, so the usual
    header set with no secret costs one pass, not one per header.
    """
    names = SECRET_HEADERS | extra_names if extra_names else SECRET_HEADERS
    rows = [(name, value, name.lower()) for name, value in headers]
    scanned = "\n".join([value for _, value, lowered in rows if lowered not in names]).encode()
    suspect = bool(matcher(rules).candidates(scanned)) or b"%" in scanned
    result, fired = [], []
    for name, value, lowered in rows:
        if lowered in names:
            result.append({"name": name, "value": REDACTED})
            fired.append("header:" + lowered)
        elif suspect:
            clean, hits = redact_text(value, rules)
            result.append({"name": name, "value": clean})
            fired += hits
        else:
            result.append({"name": name, "value": value})
    return result, fired


def redact_query(query: str, rules: Sequence[Rule]) -> tuple[str, list[str]]:
    """Query parameters named like credentials lose their value; the rest are scanned as
    they are read and decoded (a URL or a token in a parameter arrives percent-encoded,
    a space as `+`).

    A query with nothing to take out is returned as it came, byte for byte.
    """
    if not query:
        return query, []
    text, fired = redact_text(query, rules)
    kept, changed = [], False
    for name, value in parse_qsl(text, keep_blank_values=True):
        clean, hits = (REDACTED, ["query_param"]) if name.lower() in CREDENTIAL_PARAMS else redact_text(value, rules)
        kept.append((name, clean))
        fired += hits
        changed = changed or bool(hits)
    return (urlencode(kept, safe="[]:") if changed else text), list(dict.fromkeys(fired))


def credential(headers: Iterable[tuple[str, str]]) -> str | None:
    """The API key or bearer token the client authenticates with, to fingerprint it."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == "x-api-key" and value:
            return value
        if lowered == "authorization" and value:
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else value
    return None


def fingerprint(secret: str, key: bytes) -> str:
    """Keyed so that a leaked table of fingerprints cannot be checked against guessed keys."""
    return hmac.new(key, secret.encode(), hashlib.sha256).hexdigest()
