"""Generated secrets of every built-in kind, planted in every position a request or a
response can carry them, in every form: as is, JSON `\\u`-escaped, percent-encoded, split.

A `Plant` says where and how; `request_parts` and `reply` turn it into what a
client sends and what the upstream answers. `exposed` lists the fragments whose
presence anywhere means the secret leaked: the secret itself, and both halves
of its random part (a split secret that survived in halves holds no whole secret).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from urllib.parse import quote, quote_plus

import orjson
from hypothesis import strategies as st

from tests.fakes.anthropic import Reply, error_mid_stream, error_reply, json_message, text_stream, tool_use_stream
from tests.proxy.planted import escaped

ALNUM = string.ascii_letters + string.digits
UPPER_DIGITS = string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Secret:
    kind: str
    prefix: str  # fixed by the format; not itself a secret
    core: str  # the random part
    suffix: str = ""

    @property
    def text(self) -> str:
        return self.prefix + self.core + self.suffix

    @property
    def exposed(self) -> list[str]:
        half = len(self.core) // 2
        return [self.text, self.core[:half], self.core[half:]]


def _random(alphabet: str, low: int, high: int) -> st.SearchStrategy[str]:
    return st.text(alphabet, min_size=low, max_size=high)


def _secret(kind: str, prefix: str, core: st.SearchStrategy[str], suffix: str = "") -> st.SearchStrategy[Secret]:
    return core.map(lambda random: Secret(kind, prefix, random, suffix))


def _jwt(parts: tuple[str, str, str]) -> Secret:
    header, payload, signature = parts
    return Secret("jwt", f"eyJ{header}.eyJ", payload, f".{signature}")


def _pem(lines: list[str]) -> Secret:
    return Secret("private_key", "-----BEGIN RSA PRIVATE KEY-----\n", "\n".join(lines), "\n-----END RSA PRIVATE KEY-----")


# A random part starts with 8 letters and digits of its own, so that its halves never occur by chance.
_core = _random(ALNUM, 8, 8)

KINDS: dict[str, st.SearchStrategy[Secret]] = {
    "anthropic_key": _secret("anthropic_key", "sk-ant-api03-", st.tuples(_core, _random(ALNUM + "_-", 8, 80)).map("".join)),
    "openai_key": _secret("openai_key", "sk-proj-", st.tuples(_core, _random(ALNUM, 24, 60)).map("".join)),
    "aws_access_key": _secret("aws_access_key", "AKIA", _random(UPPER_DIGITS, 16, 16)),
    "github_token": _secret("github_token", "ghp_", st.tuples(_core, _random(ALNUM, 28, 50)).map("".join)),
    "slack_token": _secret("slack_token", "xoxb-", st.tuples(_core, _random(ALNUM + "-", 2, 40)).map("".join)),
    "google_api_key": _secret("google_api_key", "AIza", st.tuples(_core, _random(ALNUM + "_-", 27, 27)).map("".join)),
    "stripe_key": _secret("stripe_key", "sk_live_", st.tuples(_core, _random(ALNUM, 8, 40)).map("".join)),
    "jwt": st.tuples(
        _random(ALNUM, 8, 30), st.tuples(_core, _random(ALNUM + "_-", 0, 30)).map("".join), _random(ALNUM, 8, 40)
    ).map(_jwt),
    "private_key": st.lists(_random(ALNUM + "+/", 8, 64), min_size=1, max_size=6)
    .filter(lambda lines: len(lines[0]) >= 8)
    .map(_pem),
    "bearer_token": _secret("bearer_token", "Bearer ", st.tuples(_core, _random(ALNUM + "_-.=+/", 12, 60)).map("".join)),
    "url_password": _secret(
        "url_password",
        "postgresql://winni:",
        st.tuples(_core, _random(ALNUM + "!$&()*+,;=~", 0, 20)).map("".join),
        "@db:5432/winni",
    ),
}

# Where a request carries a secret, and where a response does.
REQUEST_POSITIONS = (
    "header",
    "user_agent",
    "path",
    "query",
    "model",
    "system",
    "user_text",
    "tool_input",
    "tool_result",
    "user_id",
    "escaped",
    "encoded",
    "split_blocks",
)
# A streamed tool input is JSON inside `partial_json` strings: cut across deltas, or `\\u`-escaped within it.
RESPONSE_POSITIONS = ("json_text", "sse_split", "sse_escaped", "sse_tool_input", "sse_tool_escaped", "sse_error", "json_error")
POSITIONS = REQUEST_POSITIONS + RESPONSE_POSITIONS


@dataclass(frozen=True)
class Plant:
    secret: Secret
    position: str
    cut: int  # where a split secret is cut, as a fraction of its length in 1/100

    @property
    def single_line(self) -> str:
        """The secret where a line break cannot go (a header, a path): still matched by its rule."""
        return self.secret.text.replace("\n", " ")

    def halves(self) -> tuple[str, str]:
        text = self.secret.text
        at = max(1, min(len(text) - 1, len(text) * self.cut // 100))
        return text[:at], text[at:]


def plants(positions: tuple[str, ...] = POSITIONS) -> st.SearchStrategy[Plant]:
    kinds = st.sampled_from(sorted(KINDS)).flatmap(lambda kind: KINDS[kind])
    return st.builds(Plant, kinds, st.sampled_from(positions), st.integers(1, 99))


@dataclass(frozen=True)
class RequestParts:
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


def request_parts(plant: Plant) -> RequestParts:
    """The request a client sends with `plant` in it; `/v1/messages` unless the path is the position."""
    position, secret = plant.position, plant.secret.text
    headers = [
        ("content-type", "application/json"),
        ("x-api-key", "sk-ant-test-not-planted"),
        ("anthropic-version", "2023-06-01"),
    ]
    headers += [("x-note", plant.single_line)] if position == "header" else []
    headers += [("user-agent", f"tool/1.0 ({plant.single_line})")] if position == "user_agent" else []
    # a path with %0A is answered 404 and not captured (issue 13 item 12), so a key's line breaks become spaces here
    path = "/v1/messages/" + quote(plant.single_line, safe="") if position == "path" else "/v1/messages"
    query = "beta=true&note=" + quote_plus(secret) if position == "query" else "beta=true"
    text = {"user_text": f"my key {secret} ok", "encoded": f"see https://x.example/?k={quote(secret, safe='')}"}.get(
        position, "hello"
    )
    user: list[dict] = [{"type": "text", "text": text}]
    if position == "split_blocks":
        first, second = plant.halves()
        user = [{"type": "text", "text": "key " + first}, {"type": "text", "text": second + " end"}]
    messages: list[dict] = [{"role": "user", "content": user}]
    if position in ("tool_input", "tool_result"):
        messages += [
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "Bash",
                        "input": {"command": f"echo {secret}" if position == "tool_input" else "ls"},
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": f"out {secret}" if position == "tool_result" else "ok",
                    }
                ],
            },
        ]
    body = {
        "model": f"claude-{secret}" if position == "model" else "claude-sonnet-4-5",
        "max_tokens": 64,
        "stream": position.startswith("sse"),
        "system": [{"type": "text", "text": f"system {secret}" if position == "system" else "be brief"}],
        "metadata": {"user_id": f"user {secret}" if position == "user_id" else "user_plain"},
        "messages": messages,
    }
    raw = orjson.dumps(body)
    if position == "escaped":
        raw = raw.replace(b'"text":"hello"', b'"text":"' + escaped(secret).encode() + b'"')
    return RequestParts(path, query, headers, raw)


def reply(plant: Plant) -> Reply:
    """What the upstream answers: a plain message unless the response is the position."""
    position, secret = plant.position, plant.secret.text
    if position == "json_text":
        return json_message(f"here it is: {secret}")
    if position == "sse_split":
        return text_stream(f"{secret}", deltas=2 + plant.cut % 4)
    if position == "sse_escaped":
        return _planted(text_stream("PLANTED", deltas=1), escaped(secret))
    if position == "sse_tool_input":
        return tool_use_stream(input={"command": f"echo {secret}"}, fragments=2 + plant.cut % 4)
    if position == "sse_tool_escaped":
        # the escape's backslash, itself escaped in `partial_json`
        return _planted(tool_use_stream(input={"command": "echo PLANTED"}, fragments=1), escaped(secret).replace("\\", "\\\\"))
    if position == "sse_error":
        return error_mid_stream(message=f"failed for {secret}")
    if position == "json_error":
        return error_reply(400, f"bad key {secret}")
    return json_message("nothing to see")


def _planted(stream: Reply, written: str) -> Reply:
    """`stream` with its `PLANTED` written as `written` in the raw bytes: a spelling the fake's JSON writer never makes."""
    return replace(stream, body=tuple(chunk.replace(b"PLANTED", written.encode()) for chunk in stream.body))
