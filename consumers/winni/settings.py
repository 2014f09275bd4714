"""Settings of `kgb consume winni`, read from `KGB_*` variables in one place."""

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
    env_str,
    env_url,
    flag,
    identifier,
    positive,
    positive_seconds,
    share,
)
from common.topics import TopicSettings


@dataclass(frozen=True)
class WinniSettings(HoldsSecrets):
    """Where winni reads from and writes to.

    ``batch_size`` bounds both the events per database transaction and the
    consumer's memory: a batch of 500 requests of 1 MB each is held at once.
    ``writers`` is how many connections write one batch at once, split by
    session (see `consumers.winni.consumer`); 1 makes each batch a single
    transaction. ``processes`` is how many processes consume at once, each a
    member of the group with its own share of the partitions (see
    `consumers.processes`); `kgb replay` reads with as many. ``retry_max``
    caps the wait between attempts while the database is away. ``store_request_bodies`` keeps every request body whole
    in ``exchanges``; by default a body whose messages the conversation tables
    hold keeps only the rest (migration 003), since whole bodies resend the
    history every turn and grow with the square of the conversation.
    ``search_index`` runs the search indexer beside the consumer (see
    `consumers.winni.search_index`), ``search_index_batch`` messages per
    statement, taking ``search_index_share`` of its connection's time while
    batches keep coming (1: as much as it can); off, messages are stored without their search vectors, which a
    winni started with it on (or `kgb replay`) builds later.
    ``unanswered_after`` is how long, in seconds, a stored request waits for
    its response before its row is marked unanswered (migration 008); it must
    exceed the longest answer, since a response event is published when its
    stream ends.
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    topics: TopicSettings = field(default_factory=TopicSettings)
    database_url: SecretURL = SecretURL("postgresql://postgres@127.0.0.1:5432/winni")
    db_schema: str = "kgb"
    group: str = "kgb-winni"
    batch_size: int = 500
    writers: int = 2
    processes: int = 1
    store_request_bodies: bool = False
    search_index: bool = True
    search_index_batch: int = 200
    search_index_share: float = 0.2
    unanswered_after: float = 3600.0
    backoff: Backoff = field(default_factory=Backoff)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WinniSettings:
        return cls(
            kafka=KafkaSettings.from_env(env),
            topics=TopicSettings.from_env(env),
            database_url=env_url(env, "KGB_DATABASE_URL", cls.database_url),
            db_schema=identifier("KGB_DB_SCHEMA", env_str(env, "KGB_DB_SCHEMA", cls.db_schema)),
            group=env_str(env, "KGB_WINNI_GROUP", cls.group),
            batch_size=positive("KGB_WINNI_BATCH_SIZE", env_int(env, "KGB_WINNI_BATCH_SIZE", cls.batch_size)),
            writers=positive("KGB_WINNI_WRITERS", env_int(env, "KGB_WINNI_WRITERS", cls.writers)),
            processes=positive("KGB_WINNI_PROCESSES", env_int(env, "KGB_WINNI_PROCESSES", cls.processes)),
            store_request_bodies=flag(env, "KGB_WINNI_STORE_REQUEST_BODIES", cls.store_request_bodies),
            search_index=flag(env, "KGB_WINNI_SEARCH_INDEX", cls.search_index),
            search_index_batch=positive(
                "KGB_WINNI_SEARCH_INDEX_BATCH", env_int(env, "KGB_WINNI_SEARCH_INDEX_BATCH", cls.search_index_batch)
            ),
            search_index_share=share(
                "KGB_WINNI_SEARCH_INDEX_SHARE", env_float(env, "KGB_WINNI_SEARCH_INDEX_SHARE", cls.search_index_share)
            ),
            unanswered_after=positive_seconds(
                "KGB_WINNI_UNANSWERED_AFTER", env_float(env, "KGB_WINNI_UNANSWERED_AFTER", cls.unanswered_after)
            ),
            backoff=Backoff(maximum=env_float(env, "KGB_WINNI_RETRY_MAX", Backoff.maximum)),
        )
