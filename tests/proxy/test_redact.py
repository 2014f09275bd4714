import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.redact import (
    BUILTIN_RULES,
    REDACTED,
    Engine,
    Matcher,
    Rule,
    credential,
    custom_rules,
    fingerprint,
    hyperscan_engine,
    matcher,
    re2_engine,
    redact_body,
    redact_document,
    redact_fields,
    redact_headers,
    redact_json,
    redact_optional,
    redact_pieces,
    redact_query,
    redact_stream,
)
from proxy.sse import SSEParser
from tests.claude_samples import load_sample
from tests.proxy.planted import ANTHROPIC_KEY, SECRETS, escaped, sse, text_delta


@pytest.mark.parametrize("rule", sorted(SECRETS))
def test_each_secret_format_is_removed_from_a_json_body_which_stays_json(rule: str) -> None:
    secret = SECRETS[rule]
    body = orjson.dumps({"messages": [{"role": "user", "content": f"my secret is {secret} ok"}]})
    redacted, fired = redact_body(body, BUILTIN_RULES)
    assert secret.encode() not in redacted
    assert orjson.dumps(secret)[1:-1] not in redacted
    assert rule in fired
    text = orjson.loads(redacted)["messages"][0]["content"]
    assert text.startswith("my secret is [REDACTED:") and text.endswith(" ok")


def test_a_body_without_secrets_is_returned_unchanged() -> None:
    body = orjson.dumps({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "sk- is a prefix; skiing"}]})
    assert redact_body(body, BUILTIN_RULES) == (body, [])


def test_custom_patterns_fire_under_their_own_names() -> None:
    redacted, fired = redact_body(b'{"x": "ACME-123456"}', custom_rules([r"ACME-\d{6}"]))
    assert redacted == b'{"x": "[REDACTED:custom_1]"}' and fired == ["custom_1"]


def test_secret_headers_lose_their_value_and_keep_order_and_duplicates() -> None:
    headers = [
        ("X-Api-Key", ANTHROPIC_KEY),
        ("Cookie", "a=1"),
        ("Cookie", "b=2"),
        ("anthropic-version", "2023-06-01"),
        ("X-Internal-Token", "t"),
        ("X-Note", f"leak {ANTHROPIC_KEY}"),
    ]
    redacted, fired = redact_headers(headers, frozenset({"x-internal-token"}), BUILTIN_RULES)
    assert [h["name"] for h in redacted] == [name for name, _ in headers]
    assert [h["value"] for h in redacted[:3]] == [REDACTED] * 3
    assert redacted[3]["value"] == "2023-06-01"
    assert redacted[4]["value"] == REDACTED
    assert ANTHROPIC_KEY not in redacted[5]["value"]
    assert {"header:x-api-key", "header:cookie", "header:x-internal-token", "anthropic_key"} <= set(fired)


def test_query_credentials_are_redacted() -> None:
    query, fired = redact_query("beta=true&api_key=sekrit", BUILTIN_RULES)
    assert "sekrit" not in query and "beta=true" in query and "query_param" in fired
    assert redact_query("beta=true", BUILTIN_RULES) == ("beta=true", [])


def test_credential_and_fingerprint() -> None:
    assert credential([("x-api-key", "k1")]) == "k1"
    assert credential([("Authorization", "Bearer tok")]) == "tok"
    assert credential([("accept", "*/*")]) is None
    first, second = fingerprint("k1", b"key"), fingerprint("k1", b"key")
    assert first == second and len(first) == 64 and "k1" not in first
    assert fingerprint("k1", b"other") != first


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("postgresql://winni:hunter2@db:5432/winni", "postgresql://winni:[REDACTED:url_password]@db:5432/winni"),
        ("redis://:s3cr3t@cache:6379/0", "redis://:[REDACTED:url_password]@cache:6379/0"),
        ("https://deploy:gh%40pass@git.example.com/repo.git", "https://deploy:[REDACTED:url_password]@git.example.com/repo.git"),
        (
            "mongodb+srv://admin:p4ss@cluster0.example.net/?retryWrites=true",
            "mongodb+srv://admin:[REDACTED:url_password]@cluster0.example.net/?retryWrites=true",
        ),
    ],
)
def test_a_password_in_a_url_goes_and_the_url_stays_readable(url: str, kept: str) -> None:
    body = orjson.dumps({"content": f"use {url} now"})
    redacted, fired = redact_body(body, BUILTIN_RULES)
    assert orjson.loads(redacted)["content"] == f"use {kept} now" and fired == ["url_password"]


@pytest.mark.parametrize(
    "text",
    [
        "https://example.com/a:b@c",
        "http://127.0.0.1:8089/v1/messages",
        "ssh git@github.com:org/repo.git",
        "http://user@host/path",
        "mailto:someone@example.com",
    ],
)
def test_urls_without_a_password_are_left_alone(text: str) -> None:
    assert redact_body(text.encode(), BUILTIN_RULES) == (text.encode(), [])


def test_a_url_password_in_a_query_is_found_percent_encoded() -> None:
    query, fired = redact_query("beta=true&dsn=postgresql%3A%2F%2Fu%3Apw%40db%2Fwinni", BUILTIN_RULES)
    assert fired == ["url_password"]
    assert parse_qsl(query) == [("beta", "true"), ("dsn", "postgresql://u:[REDACTED:url_password]@db/winni")]


@pytest.mark.parametrize("engine", [hyperscan_engine, re2_engine])
def test_both_engines_name_the_rules_that_match_and_nothing_for_a_clean_body(engine: Engine) -> None:
    found = Matcher(BUILTIN_RULES, engine)
    for rule, secret in SECRETS.items():
        assert rule in [r.name for r in found.candidates(f"x {secret} y".encode())]
    assert found.candidates(orjson.dumps(load_sample("002")["body"])) == []


@pytest.mark.parametrize("engine", [hyperscan_engine, re2_engine])
def test_a_backreference_rule_is_a_candidate_where_it_matches(engine: Engine) -> None:
    rules = custom_rules([r"(ab)\1-\d{4}"])
    assert Matcher(rules, engine).candidates(b"see abab-1234") == list(rules)
    assert redact_body(b"see abab-1234", rules) == (b"see [REDACTED:custom_1]", ["custom_1"])


def test_a_pattern_re2_cannot_read_runs_on_every_body() -> None:
    rules = custom_rules([r"(ab)\1-\d{4}", r"ACME-\d{6}"])
    assert Matcher(rules, re2_engine).candidates(b"nothing") == [rules[0]]


@pytest.mark.parametrize("rule", sorted(SECRETS))
def test_a_secret_behind_json_unicode_escapes_is_found_decoded(rule: str) -> None:
    body = b'{"messages": [{"role": "user", "content": "x ' + escaped(SECRETS[rule]).encode() + b' y"}]}'
    redacted, fired = redact_json(body, BUILTIN_RULES)
    assert rule in fired
    assert SECRETS[rule] not in orjson.loads(redacted)["messages"][0]["content"]


def test_a_body_whose_escapes_hide_nothing_keeps_its_bytes() -> None:
    body = b'{"content": "caf\\u00e9 \\/ \\u001b[0m", "n": 1.50}'
    assert redact_json(body, BUILTIN_RULES) == (body, [])


@pytest.mark.parametrize(
    ("encoded", "rule"),
    [
        ("Authorization%3A%20Bearer%20abcdefghijklmnopqrstuvwxyz012345", "bearer_token"),
        (quote(SECRETS["private_key"], safe=""), "private_key"),
        ("".join(f"%{byte:02X}" for byte in SECRETS["anthropic_key"].encode()), "anthropic_key"),
    ],
)
def test_a_percent_encoded_secret_is_found_and_written_back_encoded(encoded: str, rule: str) -> None:
    body = orjson.dumps({"url": f"https://example.com/cb?next={encoded}&x=1"})
    redacted, fired = redact_body(body, BUILTIN_RULES)
    assert fired == [rule]
    url = unquote_plus(orjson.loads(redacted)["url"])
    assert url.startswith("https://example.com/cb?next=") and url.endswith("&x=1") and f"[REDACTED:{rule}]" in url
    assert SECRETS.get(rule, "abcdefghijklmnopqrstuvwxyz012345") not in url


@pytest.mark.parametrize("cut", [1, 7, 12, 20, len(ANTHROPIC_KEY) - 1])
def test_a_secret_split_across_two_text_blocks_loses_both_halves(cut: int) -> None:
    first, second = "key: " + ANTHROPIC_KEY[:cut], ANTHROPIC_KEY[cut:] + " thanks"
    body = orjson.dumps(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": first},
                        {"type": "text", "text": second},
                    ],
                }
            ]
        }
    )
    redacted, fired = redact_json(body, BUILTIN_RULES)
    blocks = orjson.loads(redacted)["messages"][0]["content"]
    assert "anthropic_key" in fired
    assert [block["text"] for block in blocks] == ["key: [REDACTED:anthropic_key]", " thanks"]


def test_pieces_are_cut_at_the_secret_and_keep_everything_else() -> None:
    pieces = ["a sk-ant-", "api03-0123456789", "abcdef b", " c"]
    assert redact_pieces(pieces, BUILTIN_RULES) == (["a [REDACTED:anthropic_key]", "", " b", " c"], ["anthropic_key"])
    assert redact_pieces(["plain", " text"], BUILTIN_RULES) == (["plain", " text"], [])


def test_a_stream_is_rewritten_without_a_secret_split_across_deltas_or_escaped_in_an_error() -> None:
    body = (
        sse(
            ("message_start", {"type": "message_start", "message": {"id": "m", "content": []}}),
            text_delta("here: " + ANTHROPIC_KEY[:15]),
            text_delta(ANTHROPIC_KEY[15:] + " done"),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        )
        + b'event: error\ndata: {"type": "error", "error": {"type": "x", "message": "'
        + escaped(SECRETS["github_token"]).encode()
        + b'"}}\n\n'
    )
    redacted, fired = redact_stream(body, BUILTIN_RULES)
    assert sorted(set(fired)) == ["anthropic_key", "github_token"]
    assert ANTHROPIC_KEY[:15].encode() not in redacted and ANTHROPIC_KEY[15:].encode() not in redacted
    events = SSEParser().feed(redacted.decode())
    assert [event.event for event in events] == [
        "message_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "error",
    ]
    assert orjson.loads(events[1].data)["delta"]["text"] == "here: [REDACTED:anthropic_key]"
    assert orjson.loads(events[4].data)["error"]["message"] == "[REDACTED:github_token]"


def test_a_form_encoded_bearer_token_in_a_query_is_found() -> None:
    query, fired = redact_query("next=Bearer+abcdefghijklmnopqrstuvwxyz012345&x=1", BUILTIN_RULES)
    assert fired == ["bearer_token"] and "abcdefghijklmnopqrstuvwxyz012345" not in query


@pytest.mark.parametrize("engine", [hyperscan_engine, re2_engine])
def test_one_matcher_scans_from_many_threads_at_once(engine: Engine) -> None:
    found = Matcher(BUILTIN_RULES, engine)
    body = b"x" * 200_000 + ANTHROPIC_KEY.encode()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: [rule.name for rule in found.candidates(body)], range(200)))
    assert all("anthropic_key" in names for names in results)


def test_the_same_rules_get_the_same_matcher_whether_asked_by_identity_or_by_value() -> None:
    custom = custom_rules([r"tok_[0-9]{6}"])
    assert matcher(BUILTIN_RULES) is matcher(BUILTIN_RULES) is matcher(tuple(BUILTIN_RULES))
    assert matcher(BUILTIN_RULES + custom) is matcher(BUILTIN_RULES + custom)  # equal tuples, another identity
    assert matcher(BUILTIN_RULES + custom) is not matcher(BUILTIN_RULES)


def test_a_list_of_rules_changed_between_calls_is_matched_as_it_is_now() -> None:
    rules = list(BUILTIN_RULES)
    assert redact_body(b"tok_123456", rules) == (b"tok_123456", [])
    rules += custom_rules([r"tok_[0-9]{6}"])
    assert redact_body(b"tok_123456", rules) == (b"[REDACTED:custom_1]", ["custom_1"])


ANCHORED = custom_rules([r"^tok_[0-9]{6}$"])


@pytest.mark.parametrize("engine", [hyperscan_engine, re2_engine])
def test_the_automaton_reads_each_line_of_values_joined_by_newlines_as_if_alone(engine: Engine) -> None:
    found = Matcher(BUILTIN_RULES + ANCHORED, engine)
    assert [rule.name for rule in found.candidates(b"first\ntok_123456\nlast")] == ["custom_1"]
    assert [rule.name for rule in found.candidates(b"first\n" + SECRETS["aws_access_key"].encode())] == ["aws_access_key"]


def test_an_anchored_custom_rule_redacts_any_header_not_only_the_first() -> None:
    # The headers are scanned joined by newlines: a single-line automaton saw `^` only at the first one's start.
    headers, fired = redact_headers([("accept", "*/*"), ("x-token", "tok_123456")], frozenset(), BUILTIN_RULES + ANCHORED)
    assert headers[1] == {"name": "x-token", "value": "[REDACTED:custom_1]"} and fired == ["custom_1"]


def test_the_built_in_rules_are_scanned_as_written_and_their_json_bodies_as_before() -> None:
    # no anchor: the automaton and `redact_document` see what they saw before anchors were read per string
    assert [rule.scanned for rule in BUILTIN_RULES] == [rule.pattern.pattern for rule in BUILTIN_RULES]
    assert not matcher(BUILTIN_RULES).by_string and not matcher(BUILTIN_RULES + custom_rules([r"ACME-\d{6}", "[$^]x"])).by_string
    assert matcher(BUILTIN_RULES + ANCHORED).by_string


@pytest.mark.parametrize("engine", [hyperscan_engine, re2_engine])
def test_the_automaton_reads_a_value_s_own_start_and_end_at_each_line(engine: Engine) -> None:
    found = Matcher(custom_rules([r"\Atok_[0-9]{6}\Z"]), engine)
    assert [rule.name for rule in found.candidates(b"first\ntok_123456\nlast")] == ["custom_1"]


@pytest.mark.parametrize("pattern", [r"^tok_[0-9]{6}$", r"\Atok_[0-9]{6}\Z"])
def test_an_anchored_custom_rule_matches_a_whole_header_value_or_field_not_part_of_one(pattern: str) -> None:
    rules = BUILTIN_RULES + custom_rules([pattern])
    headers = [("accept", "*/*"), ("x-token", "tok_123456"), ("x-note", "see tok_123456")]
    redacted, fired = redact_headers(headers, frozenset(), rules)
    assert [header["value"] for header in redacted] == ["*/*", "[REDACTED:custom_1]", "see tok_123456"] and fired == ["custom_1"]
    assert redact_fields(["claude-cli", "tok_123456", "a tok_123456"], rules) == (
        ["claude-cli", "[REDACTED:custom_1]", "a tok_123456"],
        ["custom_1"],
    )


@pytest.mark.parametrize("pattern", [r"^tok_[0-9]{6}$", r"\Atok_[0-9]{6}\Z"])
def test_an_anchored_custom_rule_matches_each_whole_json_string_and_key(pattern: str) -> None:
    body = orjson.dumps({"a": "tok_123456", "tok_654321": 1, "l": ["x", "tok_111111", {"b": "tok_222222"}]})
    redacted, fired = redact_json(body, BUILTIN_RULES + custom_rules([pattern]))
    assert orjson.loads(redacted) == {
        "a": "[REDACTED:custom_1]",
        "[REDACTED:custom_1]": 1,
        "l": ["x", "[REDACTED:custom_1]", {"b": "[REDACTED:custom_1]"}],
    }
    assert fired == ["custom_1"] * 4


def test_an_anchored_custom_rule_leaves_a_json_string_it_only_matches_part_of_as_it_came() -> None:
    body = b'{"a": "see tok_123456 here", "b": "tok_1234567", "c": "x\\ntok_123456", "n": 123456}'
    assert redact_json(body, BUILTIN_RULES + ANCHORED) == (body, [])


@pytest.mark.parametrize(
    ("string", "pattern", "kept"),
    [
        # a \u escape is read: the pattern sees the string decoded
        (b'"tok_\\u0031\\u0032\\u0033456"', r"^tok_[0-9]{6}$", "[REDACTED:custom_1]"),
        # a quote is one character of the string, not its end
        (b'"\\"tok_123456\\""', r"^tok_[0-9]{6}$", None),
        (b'"\\"tok_123456\\""', r'^"tok_[0-9]{6}"$', "[REDACTED:custom_1]"),
        # a newline is one too: `^` marks where the string begins, not each of its lines, unless the pattern asks
        (b'"first\\ntok_123456"', r"^tok_[0-9]{6}$", None),
        (b'"first\\ntok_123456"', r"(?m)^tok_[0-9]{6}$", "first\n[REDACTED:custom_1]"),
        # as in Python, `$` also holds before a last newline; `\Z` only at the very end
        (b'"tok_123456\\n"', r"^tok_[0-9]{6}$", "[REDACTED:custom_1]\n"),
        (b'"tok_123456\\n"', r"^tok_[0-9]{6}\Z", None),
    ],
)
def test_an_anchored_custom_rule_sees_a_json_string_decoded(string: bytes, pattern: str, kept: str | None) -> None:
    body = b'{"s": ' + string + b', "t": "other"}'
    redacted, fired = redact_json(body, BUILTIN_RULES + custom_rules([pattern]))
    assert (redacted, fired) == ((body, []) if kept is None else (orjson.dumps({"s": kept, "t": "other"}), ["custom_1"]))


def test_custom_rules_without_anchors_still_match_inside_json_strings_beside_anchored_ones() -> None:
    rules = BUILTIN_RULES + custom_rules([r"^tok_[0-9]{6}$", r"ACME-\d{6}"])
    body = orjson.dumps({"a": "tok_123456", "b": "see ACME-123456 and " + ANTHROPIC_KEY})
    redacted, fired = redact_json(body, rules)
    assert orjson.loads(redacted) == {"a": "[REDACTED:custom_1]", "b": "see [REDACTED:custom_2] and [REDACTED:anthropic_key]"}
    assert sorted(fired) == ["anthropic_key", "custom_1", "custom_2"]


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (b"tok_123456", b"[REDACTED:custom_1]"),
        (b"tok_123456\n", b"[REDACTED:custom_1]\n"),
        # a body that is not JSON is one value: its lines, form fields or parts are not
        (b"first\ntok_123456\n", None),
        (b"a=1&token=tok_123456", None),
        (b"{not json: tok_123456}", None),
    ],
)
def test_an_anchored_custom_rule_matches_a_body_that_is_not_json_as_a_whole(body: bytes, kept: bytes | None) -> None:
    assert redact_json(body, BUILTIN_RULES + ANCHORED) == ((body, []) if kept is None else (kept, ["custom_1"]))


def test_an_anchored_custom_rule_matches_the_text_a_block_s_deltas_join_into_and_each_event_s_strings() -> None:
    body = sse(
        ("message_start", {"type": "message_start", "message": {"id": "tok_111111", "content": []}}),
        text_delta("tok_"),
        text_delta("123456"),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    )
    redacted, fired = redact_stream(body, BUILTIN_RULES + ANCHORED)
    events = SSEParser().feed(redacted.decode())
    assert orjson.loads(events[0].data)["message"]["id"] == "[REDACTED:custom_1]"
    assert [orjson.loads(event.data)["delta"]["text"] for event in events[1:3]] == ["[REDACTED:custom_1]", ""]
    assert sorted(fired) == ["custom_1", "custom_1"]


def each_string_alone(document: Any, rules: tuple[Rule, ...], fired: list[str]) -> Any:
    """What redacting each string of `document` (keys too) on its own makes of it."""
    if type(document) is str:
        return redact_optional(document, rules, fired)
    if type(document) is list:
        return [each_string_alone(value, rules, fired) for value in document]
    if type(document) is dict:
        return {redact_optional(key, rules, fired): each_string_alone(value, rules, fired) for key, value in document.items()}
    return document


def test_clean_fields_come_back_as_they_were() -> None:
    fields = ["session-1", None, "", "claude-cli/2.1.0 (external, cli)", "/v1/messages", "claude-sonnet-4-5"]
    assert redact_fields(fields, BUILTIN_RULES) == (fields, [])


@pytest.mark.parametrize("secret", [*SECRETS.values(), "tok_123456", "Bearer%20abcdefghijklmnopqrstuvwxyz012345", "tok%5F123456"])
@pytest.mark.parametrize("where", range(3))
def test_fields_are_redacted_as_each_would_be_alone(secret: str, where: int) -> None:
    rules = BUILTIN_RULES + ANCHORED
    fields: list[str | None] = ["session-1", None, "claude-cli/2.1.0"]
    fields[where] = secret
    fired: list[str] = []
    alone = [redact_optional(field, rules, fired) for field in fields]
    assert redact_fields(fields, rules) == (alone, fired)
    assert fired and secret not in (alone[where] or "")


def test_a_match_across_two_json_strings_does_not_eat_the_json_between_them() -> None:
    body = b'{"a":"-----BEGIN RSA PRIVATE KEY-----","b":"x -----END RSA PRIVATE KEY-----"}'
    assert redact_json(body, BUILTIN_RULES) == (body, [])


def test_a_secret_in_a_json_key_is_redacted_and_the_order_kept() -> None:
    body = orjson.dumps({"a": 1, ANTHROPIC_KEY: 2, "z": [SECRETS["github_token"]]})
    redacted, fired = redact_json(body, BUILTIN_RULES)
    assert list(orjson.loads(redacted).items()) == [("a", 1), ("[REDACTED:anthropic_key]", 2), ("z", ["[REDACTED:github_token]"])]
    assert fired == ["anthropic_key", "github_token"]


def test_a_body_nested_deeper_than_orjson_writes_is_redacted_as_bytes() -> None:
    body = b'{"n":' * 300 + orjson.dumps(ANTHROPIC_KEY) + b"}" * 300
    redacted, fired = redact_json(body, BUILTIN_RULES)
    assert fired == ["anthropic_key"] and ANTHROPIC_KEY.encode() not in redacted and redacted.startswith(b'{"n":{"n":')


def written_anew(body: bytes, rules: tuple[Rule, ...]) -> tuple[bytes, list[str]]:
    """`redact_json` as it was before it read bodies as they came: its strings looked at when a rule
    matches the document as orjson writes it."""
    cleaned, fired = redact_document(orjson.loads(body), rules)
    return (orjson.dumps(cleaned), fired) if fired else (body, [])


# After a newline, the AWS key's `\b` holds in its string alone but not where the body writes it (`\nAKIA`):
# such a string loses it only when some rule matches the body as written anew, as these bodies make one.
HIDDEN_AWS = "\n" + SECRETS["aws_access_key"]


@pytest.mark.parametrize(
    ("body", "rules"),
    [
        # a duplicate key moves the BEGIN of a key before its END in the document written anew
        (
            b'{"a":"x","b":"-----END RSA PRIVATE KEY-----","a":"-----BEGIN RSA PRIVATE KEY-----","s":'
            + orjson.dumps(HIDDEN_AWS)
            + b"}",
            BUILTIN_RULES,
        ),
        # "postgres:\/\/" written anew is "postgres://"
        (b'{"u":"postgres:\\/\\/me:hunter2@db","s":' + orjson.dumps(HIDDEN_AWS) + b"}", BUILTIN_RULES),
        (b'{"u":"' + escaped(SECRETS["github_token"]).encode() + b'"}', BUILTIN_RULES),
        (
            orjson.dumps({"u": "https://x/?t=" + "".join(f"%{byte:02X}" for byte in SECRETS["stripe_key"].encode())}),
            BUILTIN_RULES,
        ),
        # a custom rule may match what the body written anew holds between its strings
        (b'{"k": 1, "s": ' + orjson.dumps(HIDDEN_AWS) + b"}", BUILTIN_RULES + custom_rules(['"k":1'])),
        (orjson.dumps({"s": HIDDEN_AWS, "t": SECRETS["jwt"]}), BUILTIN_RULES),
        (orjson.dumps({"s": HIDDEN_AWS, "t": "nothing"}), BUILTIN_RULES),
    ],
)
def test_a_json_body_read_as_it_came_is_redacted_as_when_written_anew(body: bytes, rules: tuple[Rule, ...]) -> None:
    assert redact_json(body, rules) == written_anew(body, rules)


PERCENT_ENCODED_KEY = "".join(f"%{byte:02X}" for byte in ANTHROPIC_KEY.encode())


def test_only_a_body_whose_bytes_tell_it_is_clean_skips_being_written_anew() -> None:
    clean = orjson.dumps({"messages": [{"role": "user", "content": 'a "quoted"\nline \\ and café \x1b[0m 50% %41'}], "n": 1.5})
    unclear = [b'{"u":"a\\/b"}', b'{"u":"caf\\u00e9"}', b'{"u":"\\u000a"}', b'{"u":"\\u001B"}', b'{"u":"PRIVATE KEY-----"}']
    for found in [matcher(BUILTIN_RULES), Matcher(BUILTIN_RULES, re2_engine)]:
        assert found.clean_as_written(clean)
        assert not any(found.clean_as_written(body) for body in unclear)
        assert not found.clean_as_written(orjson.dumps({"u": PERCENT_ENCODED_KEY}))
    assert not matcher(BUILTIN_RULES + custom_rules(["ACME-[0-9]{6}"])).clean_as_written(clean)


_PIECES = st.sampled_from(
    [
        *SECRETS.values(),
        HIDDEN_AWS,
        PERCENT_ENCODED_KEY,
        "-----BEGIN RSA PRIVATE KEY-----",
        "-----END RSA PRIVATE KEY-----",
        "://u:p@h",
        "%20",
        "é",
        "\x1b",
        "\x0b",
        "tok_123456",
    ]
)
_STRINGS = st.lists(st.one_of(_PIECES, st.text(max_size=8)), max_size=4).map("".join)
_DOCUMENTS = st.recursive(
    st.one_of(_STRINGS, st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False), st.none()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_STRINGS, inner, max_size=4)),
    max_leaves=12,
)


@given(_DOCUMENTS, st.sampled_from([None, 1]), st.booleans(), st.sampled_from([(",", ":"), (", ", ": ")]))
@settings(max_examples=400, deadline=None)
def test_a_json_body_however_written_is_redacted_as_when_written_anew(
    document: Any, indent: int | None, ascii_only: bool, separators: tuple[str, str]
) -> None:
    body = json.dumps(document, indent=indent, ensure_ascii=ascii_only, separators=separators).encode()
    assert redact_json(body, BUILTIN_RULES) == written_anew(body, BUILTIN_RULES)


@given(_DOCUMENTS, st.booleans())
@settings(max_examples=300, deadline=None)
def test_with_an_anchored_rule_a_json_body_loses_what_each_string_alone_would(document: Any, ascii_only: bool) -> None:
    rules = BUILTIN_RULES + ANCHORED
    body = json.dumps(document, ensure_ascii=ascii_only).encode()
    fired: list[str] = []
    alone = each_string_alone(orjson.loads(body), rules, fired)
    redacted, hits = redact_json(body, rules)
    assert (orjson.loads(redacted), sorted(hits)) == (alone, sorted(fired))
    assert (redacted == body) == (not fired)


def tool_stream(pieces: list[str]) -> bytes:
    """A stream whose tool_use block's input comes as `pieces` of `input_json_delta`."""
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "tool_use", "id": "t", "name": "Bash", "input": {}},
    }
    deltas = [
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}},
        )
        for piece in pieces
    ]
    return sse(
        ("message_start", {"type": "message_start", "message": {"id": "m", "content": []}}),
        ("content_block_start", start),
        *deltas,
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    )


def partial_jsons(body: bytes) -> list[str]:
    events = [orjson.loads(event.data) for event in SSEParser().feed(body.decode())]
    return [event["delta"]["partial_json"] for event in events if event["type"] == "content_block_delta"]


@pytest.mark.parametrize("plain", [0, len("sk-ant-api03-")])
@pytest.mark.parametrize("cut", [18, 122, 245])  # after an escape, inside one, inside one near the end
def test_a_secret_behind_escapes_in_a_tool_s_streamed_input_leaves_the_stored_stream(plain: int, cut: int) -> None:
    written = ANTHROPIC_KEY[:plain] + escaped(ANTHROPIC_KEY[plain:])
    text = '{"command": "echo ' + written + '", "timeout": 5}'
    at = len('{"command": "echo ') + plain + cut
    body = tool_stream(['{"comm', text[6:at], text[at:]])
    redacted, fired = redact_stream(body, BUILTIN_RULES)
    assert "anthropic_key" in fired
    pieces = partial_jsons(redacted)
    assert len(pieces) == 3 and pieces[1:] == ["", ""]
    document = orjson.loads("".join(pieces))
    assert document == {"command": "echo [REDACTED:anthropic_key]", "timeout": 5}
    assert redact_document(document, BUILTIN_RULES)[1] == []
    assert ANTHROPIC_KEY[plain:].encode() not in redacted and b"\\u00" not in redacted
    before, after = SSEParser().feed(body.decode()), SSEParser().feed(redacted.decode())
    assert [event.event for event in after] == [event.event for event in before]


def test_a_secret_behind_escapes_in_a_tool_input_cut_mid_block_leaves_the_stored_stream() -> None:
    text = '{"command": "echo sk-ant-' + escaped(ANTHROPIC_KEY[len("sk-ant-") :])
    body = tool_stream([text[:30], text[30:]])
    redacted, fired = redact_stream(body, BUILTIN_RULES)
    assert "anthropic_key" in fired
    assert partial_jsons(redacted) == ['{"command": "echo [REDACTED:anthropic_key]', ""]
    url = tool_stream(['{"url": "https:\\/\\/me:hunter2', '@db\\/x", "n": 1'])
    assert partial_jsons(redact_stream(url, BUILTIN_RULES)[0]) == [
        '{"url": "https://me:[REDACTED:url_password]@db/x", "n": 1',
        "",
    ]


def test_a_tool_input_with_escapes_but_no_secret_keeps_its_pieces() -> None:
    pieces = ['{"command": "printf \\"a\\\\n', 'b\\" \\u00e9 \\/"}', ""]
    assert partial_jsons(redact_stream(tool_stream(pieces), BUILTIN_RULES)[0]) == pieces
    backslash = ['{"command": "echo \\\\u0073k-ant-', "api03-0123456789abcdef \\ud83d\\ude00"]
    assert partial_jsons(redact_stream(tool_stream(backslash), BUILTIN_RULES)[0]) == backslash
    cut = ['{"command": "echo sk-ant-', "api03-0123456789abcdef \\u0041"]
    assert partial_jsons(redact_stream(tool_stream(cut), BUILTIN_RULES)[0]) == [
        '{"command": "echo [REDACTED:anthropic_key]',
        " \\u0041",
    ]
