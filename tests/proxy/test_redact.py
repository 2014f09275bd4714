from urllib.parse import parse_qsl

import orjson
import pytest

from proxy.redact import (
    BUILTIN_RULES,
    REDACTED,
    credential,
    custom_rules,
    fingerprint,
    redact_body,
    redact_headers,
    redact_query,
)

ANTHROPIC_KEY = "sk-ant-api03-" + "A1b2C3d4" * 10 + "-xyzAA"

SECRETS = {
    "anthropic_key": ANTHROPIC_KEY,
    "openai_key": "sk-proj-" + "q" * 40,
    "aws_access_key": "AKIAIOSFODNN7EXAMPLE",
    "github_token": "ghp_" + "a" * 36,
    "slack_token": "xoxb-1234567890-abcdefghij",
    "google_api_key": "AIza" + "B" * 35,
    "stripe_key": "sk_live_" + "c" * 24,
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nabc\n-----END RSA PRIVATE KEY-----",
    "bearer_token": "Bearer abcdefghijklmnopqrstuvwxyz012345",
}


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


@pytest.mark.parametrize(("url", "kept"), [
    ("postgresql://winni:hunter2@db:5432/winni", "postgresql://winni:[REDACTED:url_password]@db:5432/winni"),
    ("redis://:s3cr3t@cache:6379/0", "redis://:[REDACTED:url_password]@cache:6379/0"),
    ("https://deploy:gh%40pass@git.example.com/repo.git", "https://deploy:[REDACTED:url_password]@git.example.com/repo.git"),
    ("mongodb+srv://admin:p4ss@cluster0.example.net/?retryWrites=true",
     "mongodb+srv://admin:[REDACTED:url_password]@cluster0.example.net/?retryWrites=true"),
])
def test_a_password_in_a_url_goes_and_the_url_stays_readable(url: str, kept: str) -> None:
    body = orjson.dumps({"content": f"use {url} now"})
    redacted, fired = redact_body(body, BUILTIN_RULES)
    assert orjson.loads(redacted)["content"] == f"use {kept} now" and fired == ["url_password"]


@pytest.mark.parametrize("text", [
    "https://example.com/a:b@c", "http://127.0.0.1:8089/v1/messages", "ssh git@github.com:org/repo.git",
    "http://user@host/path", "mailto:someone@example.com",
])
def test_urls_without_a_password_are_left_alone(text: str) -> None:
    assert redact_body(text.encode(), BUILTIN_RULES) == (text.encode(), [])


def test_a_url_password_in_a_query_is_found_percent_encoded() -> None:
    query, fired = redact_query("beta=true&dsn=postgresql%3A%2F%2Fu%3Apw%40db%2Fwinni", BUILTIN_RULES)
    assert fired == ["url_password"]
    assert parse_qsl(query) == [("beta", "true"), ("dsn", "postgresql://u:[REDACTED:url_password]@db/winni")]
