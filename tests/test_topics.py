"""KGB's topics get KGB's partitions and limit, whoever starts first."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from common.topics import TopicSettings, ensure_topics
from tests.services import create_topic, free_port

KGB = [sys.executable, "-c", "from kgb.cli import main; main()"]


async def listed(bootstrap: str) -> set[str]:
    """The topics that exist: listing them, unlike describing one, never has the broker auto-create it."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def describe(bootstrap: str, topic: str) -> tuple[int, int | None]:
    """(partitions, max.message.bytes) of ``topic``, which exists; (0, None) when it does not."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        if described["error_code"] or not described["partitions"]:
            return 0, None
        (answer,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})])
    finally:
        await admin.close()
    limits = [int(entry[1]) for resource in answer.resources for entry in resource[4] if entry[0] == "max.message.bytes"]
    return len(described["partitions"]), limits[0] if limits else None


async def test_a_consumer_started_before_the_proxy_creates_both_topics_with_kgbs_partitions(kafka, postgres) -> None:
    exchanges, mcp = (f"kgb-first-{uuid.uuid4().hex[:12]}" for _ in range(2))
    env = {
        **os.environ,
        "KGB_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "KGB_DATABASE_URL": postgres.dsn,
        "KGB_TOPIC": exchanges,
        "KGB_MCP_TOPIC": mcp,
        "KGB_TOPIC_PARTITIONS": "5",
        "KGB_METRICS_GROUP": f"first-{uuid.uuid4().hex[:8]}",
        "KGB_METRICS_SCHEMA": f"first_{uuid.uuid4().hex[:8]}",
        "KGB_METRICS_PORT": str(free_port()),
    }
    process = await asyncio.create_subprocess_exec(*KGB, "consume", "metrics", env=env, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            while not {exchanges, mcp} <= await listed(kafka.bootstrap):
                assert process.returncode is None, "the consumer exited before creating the topics"
                await asyncio.sleep(0.2)
        expected = (5, TopicSettings().max_message_bytes)
        assert [await describe(kafka.bootstrap, topic) for topic in (exchanges, mcp)] == [expected, expected]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert f"created topic {exchanges}, {mcp}: 5 partitions" in stderr.decode()


async def test_an_existing_topic_is_left_as_it_is(kafka) -> None:
    topic = await create_topic(kafka.bootstrap, partitions=2)
    assert await ensure_topics(kafka.bootstrap, [topic], TopicSettings(partitions=7)) == []
    assert (await describe(kafka.bootstrap, topic))[0] == 2
