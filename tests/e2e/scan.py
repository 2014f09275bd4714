"""Looking for a planted secret everywhere a capture ends up: raw topic bytes and a database dump.

Why more than one spelling: a leak rarely shows as the plain string. JSON
escapes it, bytea columns dump it as hex, and a body kept base64-encoded
hides it at one of three alignments, so each of those forms is searched too.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.proxy.planted import escaped

FETCH_BYTES = 128 * 1024 * 1024
# The fewest bytes of a secret whose base64 form is searched: 3 bytes make 4 characters, which
# megabytes of Avro and random ids hold by chance (a 6-character half once matched that way).
BASE64_BYTES = 6


def secret_forms(secret: str) -> dict[str, bytes]:
    """Name -> bytes whose presence anywhere means the secret leaked."""
    raw = secret.encode()
    forms = {"raw": raw, "json": orjson.dumps(secret)[1:-1], "hex": raw.hex().encode()}
    # every character a `\\u` escape, as JSON may spell it, and that JSON inside a JSON string (`partial_json`)
    spelled = escaped(secret)
    forms["u-escaped"] = spelled.encode()
    forms["u-escaped-json"] = orjson.dumps(spelled)[1:-1]
    for shift in range(3):
        aligned = raw[shift : shift + 3 * ((len(raw) - shift) // 3)]
        if len(aligned) < BASE64_BYTES:
            continue
        forms[f"base64+{shift}"] = base64.b64encode(aligned)
        forms[f"urlsafe-base64+{shift}"] = base64.urlsafe_b64encode(aligned)
    return forms


def hits(haystack: bytes, secret: str) -> dict[str, int]:
    """How often each form of `secret` occurs; only forms found at least once."""
    counts = {name: haystack.count(form) for name, form in secret_forms(secret).items()}
    return {name: count for name, count in counts.items() if count}


async def topic_bytes(bootstrap: str, topic: str) -> list[bytes]:
    """Every key and value on `topic`, undecoded, from the start to the end offsets seen now."""
    partitions = [TopicPartition(topic, number) for number in await partition_numbers(bootstrap, topic)]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=FETCH_BYTES,
        max_partition_fetch_bytes=FETCH_BYTES,
    )
    await consumer.start()
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        return await _read_until(consumer, await consumer.end_offsets(partitions))
    finally:
        await consumer.stop()


async def partition_numbers(bootstrap: str, topic: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(partition["partition"] for partition in described["partitions"])


async def _read_until(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> list[bytes]:
    found: list[bytes] = []
    async with asyncio.timeout(60):
        while await behind(consumer, ends):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found.extend(part for record in records for part in (record.key, record.value) if part)
    return found


async def behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    positions = [await consumer.position(tp) for tp in ends]
    return any(position < end for position, end in zip(positions, ends.values(), strict=True))


def pg_dump_binary() -> str:
    """Debian's newest pg_dump, else one on PATH; a missing one fails the test, it does not skip it."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda path: int(path.split("/")[4]))
    found = candidates[-1] if candidates else shutil.which("pg_dump")
    if found is None:
        raise AssertionError("pg_dump not found (apt-get install postgresql-client); the secret scan needs a database dump")
    return found


def database_dump(dsn: str) -> bytes:
    """The whole database, schema and data, as plain SQL."""
    done = subprocess.run([pg_dump_binary(), "--dbname", dsn, "--no-owner"], capture_output=True)
    if done.returncode != 0:
        raise AssertionError(f"pg_dump failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    return done.stdout


def directory_bytes(root: Path, skip: Callable[[Path], bool] = lambda path: False) -> bytes:
    """Every file under `root` but those `skip` names, concatenated: what the proxy keeps on local disk."""
    return b"\n".join(path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file() and not skip(path))
