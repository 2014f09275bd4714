"""Settings of `kgb consume metrics` and `kgb usage`, read from `KGB_*` variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from consumers.source import Backoff
from common.config import (
    HoldsSecrets,
    KafkaSettings,
    SecretURL,
    env_float,
    env_int,
    env_opt,
    env_str,
    env_url,
    identifier,
    positive,
)
from common.topics import TopicSettings


@dataclass(frozen=True)
class MetricsSettings(HoldsSecrets):
    """Where the metrics consumer reads, writes and listens.

    ``db_schema`` is the metrics tables' own schema (``KGB_METRICS_SCHEMA``,
    default ``kgb_metrics``), not winni's ``KGB_DB_SCHEMA``: `consumers.sql`
    keeps one migration history per schema, and winni's history there would
    refuse ours. It also keeps `kgb replay`'s swap of winni's schema away
    from the rollups. ``prices`` is a price table file replacing the shipped
    one (``KGB_PRICES``); None keeps the shipped one.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    database_url: SecretURL = SecretURL("postgresql://postgres@127.0.0.1:5432/winni")
    db_schema: str = "kgb_metrics"
    group: str = "kgb-metrics"
    batch_size: int = 500
    host: str = "127.0.0.1"
    port: int = 9464
    prices: str | None = None
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> MetricsSettings:
        return cls(
            kafka=KafkaSettings.from_env(env),
            topics=TopicSettings.from_env(env),
            database_url=env_url(env, "KGB_DATABASE_URL", cls.database_url),
            db_schema=identifier("KGB_METRICS_SCHEMA", env_str(env, "KGB_METRICS_SCHEMA", cls.db_schema)),
            group=env_str(env, "KGB_METRICS_GROUP", cls.group),
            batch_size=positive("KGB_METRICS_BATCH_SIZE", env_int(env, "KGB_METRICS_BATCH_SIZE", cls.batch_size)),
            host=env_str(env, "KGB_METRICS_HOST", cls.host),
            port=env_int(env, "KGB_METRICS_PORT", cls.port),
            prices=env_opt(env, "KGB_PRICES"),
            backoff=Backoff(maximum=env_float(env, "KGB_METRICS_RETRY_MAX", Backoff.maximum)),
        )
