"""A Confluent-compatible schema registry on 127.0.0.1, speaking the real REST subset.

Implements what KGB's client and tools use: ``POST /subjects/{s}/versions``,
``GET /schemas/ids/{id}``, ``GET /subjects``, ``GET /subjects/{s}/versions/latest``,
with Confluent's error JSON and status codes. Ids are global, as in Confluent
and Redpanda: the same schema gets the same id under any subject, and
re-registering it adds no version. Schemas are checked with fastavro, as a real
registry rejects invalid Avro with 422/42201.

    async with FakeSchemaRegistry() as url:
        ...  # url is "http://127.0.0.1:<free port>"

`url` is set once started; `requests` lists every (method, path) served, so
tests can prove caching.
"""

from __future__ import annotations

import json
from types import TracebackType

from aiohttp import web
from fastavro import parse_schema

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


def _reply(body: object, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _reply({"error_code": code, "message": message}, status)


def _canonical(schema_text: str) -> str:
    """How the fake decides two registrations are the same schema."""
    return json.dumps(json.loads(schema_text), sort_keys=True, separators=(",", ":"))


class FakeSchemaRegistry:
    """In-process registry state behind a real aiohttp server on a free port."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str]] = []
        self._ids: dict[str, int] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = web.Application(middlewares=[self._log])
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_get("/schemas/ids/{id}", self._schema_by_id)
        app.router.add_get("/subjects", self._list_subjects)
        app.router.add_get("/subjects/{subject}/versions/latest", self._latest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    @web.middleware
    async def _log(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    async def _register(self, request: web.Request) -> web.Response:
        try:
            text = json.loads(await request.text())["schema"]
            parse_schema(json.loads(text))
        except Exception as exc:  # any unreadable or invalid schema is the client's error
            return _error(422, 42201, f"Invalid schema: {exc}")
        key = _canonical(text)
        schema_id = self._ids.setdefault(key, len(self._ids) + 1)
        self.schemas.setdefault(schema_id, text)
        versions = self.subjects.setdefault(request.match_info["subject"], [])
        if schema_id not in versions:
            versions.append(schema_id)
        return _reply({"id": schema_id})

    async def _schema_by_id(self, request: web.Request) -> web.Response:
        raw = request.match_info["id"]
        schema_id = int(raw) if raw.isdigit() else -1
        if schema_id not in self.schemas:
            return _error(404, 40403, "Schema not found")
        return _reply({"schema": self.schemas[schema_id]})

    async def _list_subjects(self, request: web.Request) -> web.Response:
        return _reply(sorted(self.subjects))

    async def _latest(self, request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        versions = self.subjects.get(subject)
        if not versions:
            return _error(404, 40401, "Subject not found")
        schema_id = versions[-1]
        body = {"subject": subject, "version": len(versions), "id": schema_id, "schema": self.schemas[schema_id]}
        return _reply(body)
