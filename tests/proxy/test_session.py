import pytest
from multidict import CIMultiDict

from proxy.session import NAME_LIMIT, client_name, identify, session_from_metadata, session_name

SESSION = "65c8dce0-259a-4d32-9e8f-ad55d61be00d"
KEY = "f" * 64
SCOPE = "key:" + "f" * 16
SDK = {"User-Agent": "Anthropic/Python 0.40.0"}


def session(headers: dict[str, str], body: dict | None = None, key: str | None = KEY) -> tuple[str, str]:
    identity = identify(CIMultiDict(headers), body, key)
    return identity.session_key, identity.session_source


def named(user_id: object) -> dict:
    return {"metadata": {"user_id": user_id}}


def test_header_wins() -> None:
    identity = identify(
        CIMultiDict({"X-Claude-Code-Session-Id": SESSION, "x-claude-code-agent-id": "a1", "x-claude-code-parent-agent-id": "p0"}),
        None,
        None,
    )
    assert (identity.session_key, identity.session_source, identity.agent_id, identity.parent_agent_id) == (
        SESSION,
        "header",
        "a1",
        "p0",
    )


def test_metadata_json_form() -> None:
    body = named(f'{{"device_id":"d","account_uuid":"","session_id":"{SESSION}"}}')
    assert session_from_metadata(body) == (SESSION, "metadata_json")
    assert identify(CIMultiDict(), body, None).session_key == SESSION


def test_metadata_legacy_form() -> None:
    body = named(f"user_abc123_account_11111111-2222-3333-4444-555555555555_session_{SESSION}")
    assert session_from_metadata(body) == (SESSION, "metadata_legacy")


def test_other_clients_get_a_key_from_the_fingerprint_and_client() -> None:
    assert session(SDK) == (f"{SCOPE}:Anthropic", "api_key")
    assert session(SDK, named("   ")) == (f"{SCOPE}:Anthropic", "api_key")
    assert session(SDK, {"metadata": "odd"}) == (f"{SCOPE}:Anthropic", "api_key")
    assert session({}, None, None) == ("anonymous:unknown", "anonymous")


@pytest.mark.parametrize("user_id", ["user-42", "7f9c2ba4-e88f-4b0c-9c1d-1f4e9b3e8a10", '{"device_id": "d1"}', "{not json"])
def test_any_other_user_id_names_the_session_within_its_key(user_id: str) -> None:
    assert session(SDK, named(user_id)) == (f"{SCOPE}:user:{user_id}", "metadata_user")
    assert session(SDK, named(user_id), key="e" * 64) == ("key:" + "e" * 16 + f":user:{user_id}", "metadata_user")
    assert session(SDK, named(f"  {user_id}\n"), key=None) == (f"anonymous:user:{user_id}", "metadata_user")


def test_the_kgb_session_header_names_the_session_over_everything() -> None:
    body = named(f'{{"session_id":"{SESSION}"}}')
    assert session({"X-KGB-Session": "release 4.1", **SDK}) == (f"{SCOPE}:session:release 4.1", "kgb_header")
    assert session({"x-kgb-session": "release 4.1", "X-Claude-Code-Session-Id": SESSION}, body) == (
        f"{SCOPE}:session:release 4.1",
        "kgb_header",
    )
    assert session({"X-KGB-Session": " ", **SDK}, named("user-42")) == (f"{SCOPE}:user:user-42", "metadata_user")


@pytest.mark.parametrize("value", ["x" * (NAME_LIMIT + 1), "user\x00-42", "line\nbreak", "tab\there", "\x1b[31mred"])
def test_long_or_unprintable_names_are_keyed_by_their_digest(value: str) -> None:
    name = session_name(value)
    assert name is not None and name.startswith("sha256:") and len(name) == 39 and name.isprintable()
    assert session_name(value) == name and session_name(value + "!") != name
    key, source = session(SDK, named(value))
    assert (key, source) == (f"{SCOPE}:user:{name}", "metadata_user")
    assert "\x00" not in session({"X-KGB-Session": value})[0]


def test_a_claude_code_session_id_with_a_nul_is_keyed_by_its_digest_too() -> None:
    key, source = session({}, named(f'{{"session_id":"{SESSION}\\u0000"}}'))
    assert source == "metadata_json" and key.startswith("sha256:")


def test_names_that_fit_are_kept_as_sent() -> None:
    assert session_name("x" * NAME_LIMIT) == "x" * NAME_LIMIT
    assert session_name("équipe/чат 7") == "équipe/чат 7"
    assert session_name(None) is None and session_name(42) is None and session_name("") is None


def test_client_name_drops_the_version() -> None:
    assert client_name("claude-cli/2.1.3 (external, cli)") == "claude-cli"
    assert client_name(None) == "unknown"
