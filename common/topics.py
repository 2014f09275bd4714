"""KGB's topics exist with KGB's partitions and size limit before anything subscribes to them.

Whoever starts first creates them: a consumer that subscribed to a topic the
proxy had not made yet would otherwise have the broker auto-create it with the
broker's partition count and 1 MiB message limit (or, where auto-creation is
off, as dev.sh's broker has it, wait for a topic that never comes), and
`KGB_TOPIC_PARTITIONS` and `KGB_MAX_EVENT_BYTES` would never apply.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from common.config import env_int

log = logging.getLogger(__name__)

MiB = 1024 * 1024
TOPIC_ALREADY_EXISTS = 36
# Room for the record batch framing (and compression's worst case) around one event
# at the limit: what a created topic gets on top of KGB_MAX_EVENT_BYTES.
BATCH_OVERHEAD = 64 * 1024


@dataclass(frozen=True)
class TopicSettings:
    """How a topic KGB creates is made: the same whether the proxy or a consumer gets there first."""

    partitions: int = 6
    replication: int = 1
    max_event_bytes: int = 64 * MiB

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TopicSettings:
        return cls(
            partitions=env_int(env, "KGB_TOPIC_PARTITIONS", cls.partitions),
            replication=env_int(env, "KGB_TOPIC_REPLICATION", cls.replication),
            max_event_bytes=env_int(env, "KGB_MAX_EVENT_BYTES", cls.max_event_bytes),
        )

    @property
    def max_message_bytes(self) -> int:
        return self.max_event_bytes + BATCH_OVERHEAD


def new_topic(name: str, settings: TopicSettings) -> NewTopic:
    return NewTopic(
        name, settings.partitions, settings.replication, topic_configs={"max.message.bytes": str(settings.max_message_bytes)}
    )


async def ensure_topics(bootstrap: str, names: Sequence[str], settings: TopicSettings) -> list[str]:
    """Create those of ``names`` that do not exist; returns the ones this call created.

    One that exists is left as it is, whoever made it (its partitions cannot
    shrink, and altering its limit would replace every other topic setting).
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        answer = await admin.create_topics([new_topic(name, settings) for name in names])
    finally:
        await admin.close()
    created = []
    for name, code, *_ in answer.topic_errors:
        if code == 0:
            created.append(name)
        elif code != TOPIC_ALREADY_EXISTS:
            raise for_code(code)(f"creating topic {name}")
    if created:
        log.info(
            "created topic %s: %d partitions, max.message.bytes=%d",
            ", ".join(created),
            settings.partitions,
            settings.max_message_bytes,
        )
    return created
