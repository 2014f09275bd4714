"""Removing secrets before anything leaves the proxy.

Header values are replaced whole; bodies are scanned with rules that each
have cheap hints opening with a literal, so a body with no secret costs one
fast literal search per rule (about 0.4 ms per 500 KB) rather than a full
regex pass per rule. Every function returns
the names of the rules that fired, so an event says what was taken out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

REDACTED = "[REDACTED]"

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie"})

SECRET_QUERY_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret", "password"})


@dataclass(frozen=True)
class Rule:
    """A secret format. `hints` are cheap patterns, each opening with a literal, one of
    which every match contains: a body none of them finds skips the full pattern.

    A pattern with a group named ``secret`` loses only that group (a URL keeps its
    scheme, user and host, and loses its password); any other loses its whole match.
    """

    name: str
    pattern: re.Pattern[bytes]
    hints: tuple[re.Pattern[bytes], ...] = ()

    def applies_to(self, body: bytes) -> bool:
        return not self.hints or any(hint.search(body) for hint in self.hints)

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
            return whole[: start - match.start()] + self.placeholder + whole[end - match.start():]

        return self.pattern.subn(keep_around, body)


def _rule(name: str, pattern: str, *hints: str) -> Rule:
    return Rule(name, re.compile(pattern.encode(), re.DOTALL), tuple(re.compile(h.encode()) for h in hints))


# scheme://user:password@host: the user may be empty (redis://:password@host); a password
# holds no whitespace, quote, slash, '?', '#' or '@' (RFC 3986 wants those percent-encoded).
_URL_PASSWORD = r"://[^\s:/?#@\[\]\"'<>\\]*:(?P<secret>[^\s/?#@\"'<>\\]+)@"


BUILTIN_RULES: tuple[Rule, ...] = (
    _rule("anthropic_key", r"sk-ant-[A-Za-z0-9_\-]{16,}", "sk-ant-"),
    _rule("openai_key", r"sk-(?:proj-)?[A-Za-z0-9_\-]{32,}", "sk-"),
    _rule("aws_access_key", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "A(?:KI|SI)A"),
    _rule(
        "github_token",
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        "g(?:h[pousr]|ithub_pat)_",
    ),
    _rule("slack_token", r"\bxox[abprs]-[A-Za-z0-9\-]{10,}", "xox[abprs]-"),
    _rule("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}", "AIza"),
    _rule("stripe_key", r"\b[sr]k_live_[0-9A-Za-z]{16,}", "k_live_"),
    _rule("jwt", r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", "eyJ"),
    _rule(
        "private_key",
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----",
        "-----BEGIN ",
    ),
    _rule("bearer_token", r"(?i:bearer)\s+[A-Za-z0-9_\-\.=+/]{20,}", "earer", "EARER"),
    _rule("url_password", _URL_PASSWORD, "://"),
)


def custom_rules(patterns: Iterable[str]) -> tuple[Rule, ...]:
    """Rules from `KGB_REDACT_PATTERNS`; they have no prefix, so each costs a full scan."""
    return tuple(_rule(f"custom_{i}", pattern) for i, pattern in enumerate(patterns, start=1))


def redact_body(body: bytes, rules: Sequence[Rule]) -> tuple[bytes, list[str]]:
    """Replace every match with `[REDACTED:<rule>]`, which keeps a JSON body valid JSON."""
    fired = []
    for rule in rules:
        if not rule.applies_to(body):
            continue
        body, count = rule.replace(body)
        if count:
            fired.append(rule.name)
    return body, fired


def redact_text(text: str, rules: Sequence[Rule]) -> tuple[str, list[str]]:
    redacted, fired = redact_body(text.encode(), rules)
    return redacted.decode(errors="replace"), fired


def redact_headers(
    headers: Iterable[tuple[str, str]], extra_names: frozenset[str], rules: Sequence[Rule]
) -> tuple[list[dict[str, str]], list[str]]:
    """Secret headers lose their value; the rest are scanned like a body (a token can hide anywhere).

    The rules' hints run once over all the values together, so the usual
    header set with no secret costs one pass, not one per header and rule.
    """
    names = SECRET_HEADERS | extra_names
    headers = list(headers)
    scanned = "\n".join(value for name, value in headers if name.lower() not in names).encode()
    rules = [rule for rule in rules if rule.applies_to(scanned)]
    result, fired = [], []
    for name, value in headers:
        if name.lower() in names:
            result.append({"name": name, "value": REDACTED})
            fired.append(f"header:{name.lower()}")
            continue
        if rules:
            value, hits = redact_text(value, rules)
            fired.extend(hits)
        result.append({"name": name, "value": value})
    return result, fired


def redact_query(query: str, rules: Sequence[Rule]) -> tuple[str, list[str]]:
    """Query parameters named like credentials lose their value; the rest are scanned as they
    are read, decoded (a URL or a token in a parameter arrives percent-encoded).

    A query with nothing to take out is returned as it came, byte for byte.
    """
    if not query:
        return query, []
    text, fired = redact_text(query, rules)
    pairs = parse_qsl(text, keep_blank_values=True)
    kept, changed = [], False
    for name, value in pairs:
        if name.lower() in SECRET_QUERY_PARAMS:
            kept.append((name, REDACTED))
            fired.append("query_param")
            changed = True
            continue
        clean, hits = redact_text(value, rules)
        kept.append((name, clean))
        fired.extend(hits)
        changed = changed or bool(hits)
    return (urlencode(kept, safe="[]:") if changed else text), fired


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
