"""What a request says of its sender (common/senders.py), as the proxy and winni both read it."""

import orjson

from common.senders import ClaudeUser, claude_user, client_and_version, user_id

SESSION = "65c8dce0-259a-4d32-9e8f-ad55d61be00d"


def named(user_id: object) -> dict:
    return {"metadata": {"user_id": user_id}}


def test_claude_code_says_who_it_is_in_either_form() -> None:
    modern = named(f'{{"device_id":"d","account_uuid":"","session_id":"{SESSION}"}}')
    assert claude_user(modern) == ClaudeUser("metadata_json", SESSION, "d", None)
    legacy = named(f"user_abc123_account_1b2c-3d_session_{SESSION}")
    assert claude_user(legacy) == ClaudeUser("metadata_legacy", SESSION, "abc123", "1b2c-3d")
    assert claude_user(named("user_abc123_account__session_short")) == ClaudeUser("metadata_legacy", None, "abc123", None)
    assert claude_user(named("{not json")) is None and claude_user(named("[1]")) is None
    assert claude_user(named("an end user")) is None
    assert claude_user(None) is None and claude_user({"metadata": "odd"}) is None


def test_the_session_id_is_kept_as_sent_for_the_proxy_to_key() -> None:
    sent = "s\x00" + "x" * 200  # a NUL, and longer than a session key may be
    assert claude_user(named(orjson.dumps({"session_id": sent}).decode())) == ClaudeUser("metadata_json", sent, None, None)
    assert claude_user(named('{"session_id": 7, "device_id": ""}')) == ClaudeUser("metadata_json", None, None, None)


def test_a_user_id_of_blanks_is_none() -> None:
    assert user_id(named("user-42")) == "user-42"
    assert user_id(named("   ")) is None and user_id(named(42)) is None and user_id({"metadata": "odd"}) is None


def test_the_client_and_its_version_from_the_user_agent() -> None:
    assert client_and_version("claude-cli/2.1.197 (external, cli)") == ("claude-cli", "2.1.197")
    assert client_and_version("Anthropic/Python 0.40.0") == ("Anthropic", "Python")
    assert client_and_version(None) == (None, None)
