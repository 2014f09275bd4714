"""`WinniSettings.from_env`: defaults, overrides, and secrets that never print."""

from __future__ import annotations

import pytest

from consumers.source import Backoff
from consumers.winni.settings import WinniSettings
from common.config import KafkaSettings, SettingsError, mask_url


def test_defaults() -> None:
    settings = WinniSettings.from_env({})
    assert settings == WinniSettings(
        kafka=KafkaSettings(),
        database_url="postgresql://postgres@127.0.0.1:5432/winni",
        db_schema="kgb",
        group="kgb-winni",
        batch_size=500,
        writers=2,
        backoff=Backoff(initial=0.5, maximum=30.0),
    )


def test_every_variable_is_read() -> None:
    settings = WinniSettings.from_env(
        {
            "KGB_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
            "KGB_TOPIC": "t",
            "KGB_SCHEMA_REGISTRY_URL": "http://127.0.0.1:8081",
            "KGB_DATABASE_URL": "postgresql://winni:pw@127.0.0.1:5433/w",
            "KGB_DB_SCHEMA": "kgb_rebuild",
            "KGB_WINNI_GROUP": "g",
            "KGB_WINNI_BATCH_SIZE": "50",
            "KGB_WINNI_RETRY_MAX": "5",
            "KGB_WINNI_WRITERS": "3",
            "KGB_WINNI_STORE_REQUEST_BODIES": "TRUE",
            "KGB_WINNI_PROCESSES": "2",
            "KGB_WINNI_UNANSWERED_AFTER": "90.5",
        }
    )
    assert settings.kafka == KafkaSettings(bootstrap="127.0.0.1:19092", topic="t", schema_registry_url="http://127.0.0.1:8081")
    assert (settings.database_url, settings.db_schema, settings.group) == (
        "postgresql://winni:pw@127.0.0.1:5433/w",
        "kgb_rebuild",
        "g",
    )
    assert (settings.batch_size, settings.writers, settings.processes, settings.backoff.maximum) == (50, 3, 2, 5.0)
    assert settings.store_request_bodies is True
    assert settings.unanswered_after == 90.5


def test_passwords_print_masked() -> None:
    settings = WinniSettings.from_env(
        {
            "KGB_DATABASE_URL": "postgresql://winni:s3cret@127.0.0.1:5433/w?sslmode=disable",
            "KGB_SCHEMA_REGISTRY_URL": "http://reg:t0ken@127.0.0.1:8081",
        }
    )
    for shown in (repr(settings), str(settings), f"{settings}"):
        assert "s3cret" not in shown and "t0ken" not in shown
        assert "postgresql://winni:****@127.0.0.1:5433/w?sslmode=disable" in shown
        assert "http://reg:****@127.0.0.1:8081" in shown
    assert mask_url("postgresql://postgres@127.0.0.1/winni") == "postgresql://postgres@127.0.0.1/winni"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KGB_DB_SCHEMA": "kgb; DROP TABLE x"}, "KGB_DB_SCHEMA must be a plain identifier"),
        ({"KGB_WINNI_BATCH_SIZE": "0"}, "KGB_WINNI_BATCH_SIZE must be at least 1"),
        ({"KGB_WINNI_BATCH_SIZE": "many"}, "KGB_WINNI_BATCH_SIZE must be an integer"),
        ({"KGB_WINNI_WRITERS": "0"}, "KGB_WINNI_WRITERS must be at least 1"),
        ({"KGB_WINNI_PROCESSES": "0"}, "KGB_WINNI_PROCESSES must be at least 1"),
        ({"KGB_WINNI_STORE_REQUEST_BODIES": "sometimes"}, "KGB_WINNI_STORE_REQUEST_BODIES must be true or false"),
        ({"KGB_WINNI_UNANSWERED_AFTER": "0"}, "KGB_WINNI_UNANSWERED_AFTER must be a number of seconds above 0"),
        ({"KGB_WINNI_UNANSWERED_AFTER": "inf"}, "KGB_WINNI_UNANSWERED_AFTER must be a number of seconds above 0"),
        ({"KGB_WINNI_UNANSWERED_AFTER": "nan"}, "KGB_WINNI_UNANSWERED_AFTER must be a number of seconds above 0"),
        ({"KGB_WINNI_UNANSWERED_AFTER": "an hour"}, "KGB_WINNI_UNANSWERED_AFTER must be a number"),
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        WinniSettings.from_env(env)
