"""Settings of `kgb consume dewey`, read from `KGB_*` variables in one place."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from consumers.source import Backoff
from common.config import (
    HoldsSecrets,
    KafkaSettings,
    SecretURL,
    SettingsError,
    env_float,
    env_int,
    env_str,
    env_url,
    identifier,
    positive,
)
from common.topics import TopicSettings

# Dewey's documented limit for one dewey_store_messages_bulk call.
MAX_BULK_MESSAGES = 1000


@dataclass(frozen=True)
class JitteredBackoff(Backoff):
    """`Backoff`'s capped exponential delays, each drawn from its upper half.

    Many consumers retrying one Dewey that came back would otherwise all call it
    in the same instant; half the delay stays, so the wait never collapses to 0.
    """

    def delays(self) -> Iterator[float]:
        for delay in super().delays():
            yield random.uniform(delay / 2, delay)


@dataclass(frozen=True)
class DeweySettings(HoldsSecrets):
    """Where the Dewey consumer reads, keeps its state, and sends.

    ``db_schema`` (``KGB_DEWEY_SCHEMA``, default ``kgb_dewey``) holds this
    consumer's own copy of the conversation tables, built by winni's stages,
    and the KGB→Dewey mapping; it never reads winni's schema, so it runs when
    winni is down or behind. ``bulk_size`` and ``bulk_bytes`` bound one
    ``dewey_store_messages_bulk`` call (a single larger message goes alone).
    ``timeout`` is how long one call may take before the connection is
    dropped and the batch retried; a call that timed out may have been
    applied, which the consumer checks with Dewey before sending again.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    database_url: SecretURL = SecretURL("postgresql://postgres@127.0.0.1:5432/winni")
    db_schema: str = "kgb_dewey"
    group: str = "kgb-dewey"
    url: SecretURL = SecretURL("ws://dewey-mcp:9020")
    batch_size: int = 500
    bulk_size: int = MAX_BULK_MESSAGES
    bulk_bytes: int = 4 * 1024 * 1024
    timeout: float = 30.0
    backoff: Backoff = field(default_factory=JitteredBackoff)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> DeweySettings:
        return cls(
            kafka=KafkaSettings.from_env(env),
            topics=TopicSettings.from_env(env),
            database_url=env_url(env, "KGB_DATABASE_URL", cls.database_url),
            db_schema=identifier("KGB_DEWEY_SCHEMA", env_str(env, "KGB_DEWEY_SCHEMA", cls.db_schema)),
            group=env_str(env, "KGB_DEWEY_GROUP", cls.group),
            url=env_url(env, "KGB_DEWEY_URL", cls.url),
            batch_size=positive("KGB_DEWEY_BATCH_SIZE", env_int(env, "KGB_DEWEY_BATCH_SIZE", cls.batch_size)),
            bulk_size=bulk_size(env_int(env, "KGB_DEWEY_BULK_SIZE", cls.bulk_size)),
            bulk_bytes=positive("KGB_DEWEY_BULK_BYTES", env_int(env, "KGB_DEWEY_BULK_BYTES", cls.bulk_bytes)),
            timeout=env_float(env, "KGB_DEWEY_TIMEOUT", cls.timeout),
            backoff=JitteredBackoff(maximum=env_float(env, "KGB_DEWEY_RETRY_MAX", Backoff.maximum)),
        )


def bulk_size(value: int) -> int:
    if not 1 <= value <= MAX_BULK_MESSAGES:
        raise SettingsError(f"KGB_DEWEY_BULK_SIZE must be between 1 and {MAX_BULK_MESSAGES}, got {value}")
    return value
