from multidict import CIMultiDict

from proxy.session import client_name, identify, session_from_metadata

SESSION = "65c8dce0-259a-4d32-9e8f-ad55d61be00d"


def test_header_wins() -> None:
    identity = identify(CIMultiDict({"X-Claude-Code-Session-Id": SESSION, "x-claude-code-agent-id": "a1", "x-claude-code-parent-agent-id": "p0"}), None, None)
    assert (identity.session_key, identity.session_source, identity.agent_id, identity.parent_agent_id) == (SESSION, "header", "a1", "p0")


def test_metadata_json_form() -> None:
    body = {"metadata": {"user_id": '{"device_id":"d","account_uuid":"","session_id":"%s"}' % SESSION}}
    assert session_from_metadata(body) == (SESSION, "metadata_json")
    assert identify(CIMultiDict(), body, None).session_key == SESSION


def test_metadata_legacy_form() -> None:
    body = {"metadata": {"user_id": f"user_abc123_account_11111111-2222-3333-4444-555555555555_session_{SESSION}"}}
    assert session_from_metadata(body) == (SESSION, "metadata_legacy")


def test_other_clients_get_a_key_from_the_fingerprint_and_client() -> None:
    identity = identify(CIMultiDict({"User-Agent": "Anthropic/Python 0.40.0"}), {"metadata": {"user_id": "not-ours"}}, "f" * 64)
    assert (identity.session_key, identity.session_source) == ("key:" + "f" * 16 + ":Anthropic", "api_key")
    assert identify(CIMultiDict(), None, None).session_source == "anonymous"


def test_client_name_drops_the_version() -> None:
    assert client_name("claude-cli/2.1.3 (external, cli)") == "claude-cli"
    assert client_name(None) == "unknown"
