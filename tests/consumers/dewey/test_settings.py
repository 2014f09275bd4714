"""`KGB_DEWEY_*` settings: defaults, limits, and what is printed."""

from __future__ import annotations

import itertools

import pytest

from consumers.dewey.settings import DeweySettings, JitteredBackoff
from common.config import SettingsError


def test_defaults_name_the_dewey_service_and_a_group_of_its_own() -> None:
    settings = DeweySettings.from_env({})
    assert (settings.url, settings.group, settings.db_schema, settings.bulk_size) == (
        "ws://dewey-mcp:9020",
        "kgb-dewey",
        "kgb_dewey",
        1000,
    )


def test_variables_override_and_a_password_prints_masked() -> None:
    settings = DeweySettings.from_env(
        {
            "KGB_DEWEY_URL": "ws://dewey:9020",
            "KGB_DEWEY_GROUP": "g",
            "KGB_DEWEY_BULK_SIZE": "50",
            "KGB_DEWEY_TIMEOUT": "2.5",
            "KGB_DEWEY_RETRY_MAX": "4",
            "KGB_DATABASE_URL": "postgresql://w:secret@db/winni",
        }
    )
    assert (settings.url, settings.group, settings.bulk_size, settings.timeout, settings.backoff.maximum) == (
        "ws://dewey:9020",
        "g",
        50,
        2.5,
        4.0,
    )
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("size", ["0", "1001"])
def test_a_bulk_size_beyond_what_dewey_takes_is_refused(size: str) -> None:
    with pytest.raises(SettingsError, match="KGB_DEWEY_BULK_SIZE"):
        DeweySettings.from_env({"KGB_DEWEY_BULK_SIZE": size})


def test_retry_delays_grow_jittered_and_capped() -> None:
    delays = list(itertools.islice(JitteredBackoff(initial=1, maximum=8).delays(), 8))
    bounds = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(b / 2 <= d <= b for d, b in zip(delays, bounds, strict=True))


def test_kgb_consume_dewey_takes_the_url_as_a_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from kgb.cli import parser

    args = parser().parse_args(["consume", "dewey", "--url", "ws://127.0.0.1:9020"])
    assert args.url == "ws://127.0.0.1:9020"
    with pytest.raises(SystemExit):
        parser().parse_args(["consume", "dewey", "--help"])
    assert "KGB_DEWEY_URL" in capsys.readouterr().out


def test_a_bad_schema_is_refused_by_its_own_name() -> None:
    with pytest.raises(SettingsError, match=r"^KGB_DEWEY_SCHEMA must be a plain identifier"):
        DeweySettings.from_env({"KGB_DEWEY_SCHEMA": "kgb-dewey"})
