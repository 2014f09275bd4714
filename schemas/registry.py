"""Client for a Confluent-compatible schema registry (Redpanda's built-in one, or Confluent's).

Only what the codec needs: register a schema under a subject to get its global
id (producers), and fetch a writer schema by id (consumers). Both are cached for
the life of the client, since ids are immutable; concurrent lookups of one id
share a single request. The caller owns the `aiohttp.ClientSession` (and its
timeouts); this client never creates or closes one.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from yarl import URL

from common.config import mask_url
from schemas.errors import RegistryError, clip

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def subject_for_topic(topic: str) -> str:
    """TopicNameStrategy: the subject of a topic's message values."""
    return f"{topic}-value"


def canonical_json(schema: Any) -> str:
    """One spelling per schema, so equal schemas share a cache entry."""
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class Registry:
    """Registers and fetches Avro schemas; every failure becomes a `RegistryError`."""

    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self._base = URL(base_url.rstrip("/"))
        self._session = session
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, asyncio.Future[dict]] = {}

    async def register(self, subject: str, schema: dict) -> int:
        """The schema's global id; registering an already known schema is a no-op upstream."""
        key = (subject, canonical_json(schema))
        if key not in self._ids:
            url = self._base / "subjects" / subject / "versions"
            answer = await self._call("POST", url, {"schema": key[1]})
            schema_id = _field(answer, "id", int)
            self._ids[key] = schema_id
            self._remember(schema_id, schema)
        return self._ids[key]

    async def schema_by_id(self, schema_id: int) -> dict:
        """The Avro schema (parsed JSON) registered under this id."""
        if schema_id not in self._schemas:
            self._schemas[schema_id] = asyncio.ensure_future(self._fetch(schema_id))
        try:
            return await asyncio.shield(self._schemas[schema_id])
        except RegistryError:
            self._schemas.pop(schema_id, None)
            raise

    async def _fetch(self, schema_id: int) -> dict:
        answer = await self._call("GET", self._base / "schemas" / "ids" / str(schema_id))
        if answer.get("schemaType", "AVRO") != "AVRO":
            raise RegistryError(f"schema id {schema_id} is {answer['schemaType']}, not Avro")
        try:
            return json.loads(_field(answer, "schema", str))
        except ValueError:
            raise RegistryError(f"schema id {schema_id} is not Avro JSON") from None

    def _remember(self, schema_id: int, schema: dict) -> None:
        if schema_id not in self._schemas:
            done: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
            done.set_result(schema)
            self._schemas[schema_id] = done

    async def _call(self, method: str, url: URL, payload: dict | None = None) -> dict:
        """One request; the single place where HTTP and network failures are translated."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        try:
            async with self._session.request(method, url, data=body, headers=headers) as resp:
                text = await resp.text()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise RegistryError(f"{method} {mask_url(str(url))}: registry unreachable: {exc!r}") from exc
        return _answer(method, url, status, text)


def _answer(method: str, url: URL, status: int, text: str) -> dict:
    """The JSON object of a 2xx answer, else the registry's own message as an error."""
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if status >= 300 or not isinstance(answer, dict):
        message = answer.get("message") if isinstance(answer, dict) else None
        code = answer.get("error_code") if isinstance(answer, dict) else None
        raise RegistryError(f"{method} {mask_url(str(url))}: {status}: {message or clip(text)}", status, code)
    return answer


def _field(answer: dict, name: str, kind: type) -> Any:
    value = answer.get(name)
    if not isinstance(value, kind):
        raise RegistryError(f"registry answer lacks {name!r}: {clip(json.dumps(answer))}")
    return value
