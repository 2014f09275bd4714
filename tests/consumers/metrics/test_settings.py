"""`MetricsSettings.from_env`: defaults, overrides, refusals, and secrets that never print."""

from __future__ import annotations

import pytest

from consumers.metrics.settings import MetricsSettings
from consumers.source import Backoff
from common.config import KafkaSettings, SettingsError


def test_defaults() -> None:
    assert MetricsSettings.from_env({}) == MetricsSettings(
        kafka=KafkaSettings(),
        database_url="postgresql://postgres@127.0.0.1:5432/winni",
        db_schema="kgb_metrics",
        group="kgb-metrics",
        batch_size=500,
        host="127.0.0.1",
        port=9464,
        prices=None,
        backoff=Backoff(initial=0.5, maximum=30.0),
    )


def test_every_variable_is_read() -> None:
    settings = MetricsSettings.from_env(
        {
            "KGB_KAFKA_BOOTSTRAP": "127.0.0.1:19092",
            "KGB_TOPIC": "t",
            "KGB_DATABASE_URL": "postgresql://u@127.0.0.1:5433/w",
            "KGB_METRICS_SCHEMA": "usage_rebuild",
            "KGB_METRICS_GROUP": "g",
            "KGB_METRICS_BATCH_SIZE": "50",
            "KGB_METRICS_HOST": "0.0.0.0",
            "KGB_METRICS_PORT": "19464",
            "KGB_PRICES": "/etc/kgb/prices.toml",
            "KGB_METRICS_RETRY_MAX": "5",
        }
    )
    assert settings.kafka == KafkaSettings(bootstrap="127.0.0.1:19092", topic="t")
    assert (settings.database_url, settings.db_schema, settings.group) == (
        "postgresql://u@127.0.0.1:5433/w",
        "usage_rebuild",
        "g",
    )
    assert (settings.batch_size, settings.host, settings.port) == (50, "0.0.0.0", 19464)
    assert (settings.prices, settings.backoff.maximum) == ("/etc/kgb/prices.toml", 5.0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("KGB_METRICS_PORT", "ninety", "KGB_METRICS_PORT must be an integer"),
        ("KGB_METRICS_BATCH_SIZE", "0", "KGB_METRICS_BATCH_SIZE must be at least 1"),
        ("KGB_METRICS_SCHEMA", "usage; DROP", "KGB_METRICS_SCHEMA must be a plain identifier"),
    ],
)
def test_bad_values_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        MetricsSettings.from_env({name: value})


def test_passwords_print_masked() -> None:
    settings = MetricsSettings.from_env(
        {
            "KGB_DATABASE_URL": "postgresql://winni:s3cret@127.0.0.1:5433/w",
            "KGB_SCHEMA_REGISTRY_URL": "http://reg:t0ken@127.0.0.1:8081",
        }
    )
    for shown in (repr(settings), str(settings)):
        assert "s3cret" not in shown and "t0ken" not in shown
        assert "postgresql://winni:****@127.0.0.1:5433/w" in shown and "port=9464" in shown
