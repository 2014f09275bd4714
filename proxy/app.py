"""The capture proxy: streams every request upstream as it arrives, and the answer back.

Each piece of the exchange is appended to the capture log (proxy/tap.py) as it
passes, a body piece before it goes upstream and a chunk before it goes to the
client, so the relay never holds a whole body; building and publishing the
events is the capture worker's, in another process (proxy/worker.py). The
long-lived upstream connection pool (proxy/upstream.py) and the log writer are opened and closed here, at
the edge of the app, and nowhere else.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import _InfoDict
from yarl import URL

from common.config import mask_url
from common.outages import HEALTH
from proxy import errors
from proxy.capture import RequestRecord
from proxy.logwriter import LogWriter
from proxy.metrics import CONTENT_TYPE, ProxyMetrics
from proxy.settings import ProxySettings, fingerprint_key
from proxy.tap import Exchange, HeaderPolicy, McpSink, Tap, capture_log, exchange_id
from proxy.upstream import Origin, Pool, Response, UpstreamError, content_length, header

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# RFC 9110 §7.6.1, plus the legacy Proxy-Connection; Host and Content-Length are set by the client library.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
_NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length"}

SETTINGS = web.AppKey("settings", ProxySettings)
SESSION = web.AppKey("session", Pool)
WRITER = web.AppKey("writer", LogWriter)
TAP = web.AppKey("tap", Tap)
MCP_SINK = web.AppKey("mcp_sink", McpSink)
METRICS = web.AppKey("metrics", ProxyMetrics)


def end_to_end(headers: Iterable[tuple[str, str]], connection: str | None, drop: frozenset[str]) -> list[tuple[str, str]]:
    """Headers minus hop-by-hop ones, including any the Connection header names."""
    if connection:
        drop = drop | {token.strip().lower() for token in connection.split(",") if token.strip()}
    return [(name, value) for name, value in headers if name.lower() not in drop]


def upstream_target(base: str, raw_path: str, raw_query: str) -> tuple[Origin, str]:
    """The client chooses path and query only: `base`'s origin and path prefix are fixed, whatever the path looks like."""
    origin, prefix = _base(base)
    path = raw_path if raw_path.startswith("/") else "/" + raw_path
    return origin, prefix + path + (f"?{raw_query}" if raw_query else "")


@functools.cache
def _base(base: str) -> tuple[Origin, str]:
    return Origin.of(base), urlsplit(base).path.rstrip("/")


async def forward(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings, metrics = app[SETTINGS], app[METRICS]
    raw_headers = decoded(request.raw_headers)
    origin_form = request.rel_url.raw_path.startswith("/")
    record = RequestRecord(
        method=request.method,
        path=request.rel_url.raw_path if origin_form else request.raw_path,
        query=request.rel_url.raw_query_string,
        http_version=f"{request.version.major}.{request.version.minor}",
        headers=raw_headers,
        body=b"",
        exchange_id=exchange_id(),
    )
    if not origin_form:
        refusal = f"KGB proxy: {request.method} {request.raw_path} is not relayed: only a path goes upstream"
        return _fail(request, app[TAP].request(record), errors.TargetNotRelayed(refusal))
    limit, declared = settings.max_body_bytes, request.content_length
    if declared is not None and declared > limit:
        too_large = errors.BodyTooLarge(f"KGB proxy: request body of {declared} bytes exceeds the {limit}-byte limit")
        return _fail(request, app[TAP].request(record), too_large)
    outgoing = end_to_end(raw_headers, request.headers.get("connection"), _NOT_FORWARDED)
    body = Body(request, app[TAP], record, declared, limit)
    origin, target = upstream_target(settings.upstream_url, record.path, record.query)
    try:  # a streamed body goes upstream as the client framed it: its declared length, else chunked
        upstream = await app[SESSION].request(
            origin, request.method, target, outgoing, body.payload(), length=declared, sent=body.exchange
        )
    except Exception as exc:  # noqa: BLE001 - every failure is answered and captured
        await body.drain()
        return _fail(request, body.exchange(), body.failure or errors.translate(exc))
    async with upstream:
        return await _relay(request, record, upstream, body.exchange(), metrics)


class Body:
    """A request body on its way upstream as it arrives: each piece goes to the capture log, then on,
    so the relay never holds a whole body. A body past `limit` (it declared no length, or lied) or
    a client that leaves mid-body stops it: the upstream request is aborted, and `failure` says why."""

    def __init__(self, request: web.Request, tap: Tap, record: RequestRecord, declared: int | None, limit: int) -> None:
        self._request, self._tap, self._record, self._declared, self._limit = request, tap, record, declared, limit
        self._started_ns = time.perf_counter_ns()
        self._exchange: Exchange | None = None
        self._whole: bytes | None = None
        self._size = 0
        self.failure: errors.Refused | None = None
        self.ended = not request.body_exists

    def payload(self) -> bytes | AsyncIterator[bytes] | None:
        """What goes upstream: nothing; the body itself when all of it is here already (most requests:
        no stream to run, and its records leave in one write); else its pieces as they come."""
        if self.ended:
            return None
        content = self._request.content
        if not content.is_eof() or content.total_bytes > self._limit:
            return self.pieces()
        self._whole = content.read_nowait()
        self._size = len(self._whole)
        self.ended = True
        return self._whole

    def exchange(self) -> Exchange:
        """The exchange's records, begun when first asked for: by the pool once the request is written
        (`Pool.request`'s `sent`), so that building them does not hold the request back. Nothing is lost by
        the wait: a body whole in memory had its records held in the writer until the answer's came anyway,
        and a streamed body's pieces, each logged before it goes, start only after."""
        if self._exchange is None:
            exchange = self._exchange = self._tap.streaming(self._record, self._declared)
            exchange.started_ns = self._started_ns  # the exchange's clock starts with its request, not its records
            if self._whole is not None:
                exchange.body(self._whole, hold=True)  # small, and the next record comes before the upstream's answer
                self._whole = None
            if self.ended:  # none, or whole: a streamed body's pieces end it themselves
                exchange.body_end()
        return self._exchange

    async def pieces(self) -> AsyncIterator[bytes]:
        exchange = self.exchange()
        try:
            async for piece in self._request.content.iter_any():
                self._size += len(piece)
                if self._size > self._limit:
                    self.failure = errors.BodyTooLarge(f"KGB proxy: request body exceeds the {self._limit}-byte limit")
                    break
                exchange.body(piece)
                yield piece
        except (aiohttp.ClientPayloadError, ConnectionError) as exc:
            self.failure = errors.ClientLeft(f"KGB proxy: the client went away before its request body ended ({exc})")
        self.ended = True
        left = isinstance(self.failure, errors.ClientLeft)
        exchange.body_end(discarded=isinstance(self.failure, errors.BodyTooLarge), partial=left)
        if self.failure is not None:
            raise self.failure

    async def drain(self) -> None:
        """The rest of a body the upstream never took, into the log alone: the failed exchange is captured whole."""
        if not self.ended:
            with contextlib.suppress(errors.Refused):
                async for _ in self.pieces():
                    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    """A body whole, for relays that must parse it before forwarding (MCP's JSON-RPC)."""
    if request.content_length is not None and request.content_length > limit:
        raise errors.BodyTooLarge(f"KGB proxy: request body of {request.content_length} bytes exceeds the {limit}-byte limit")
    chunks, size = [], 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise errors.BodyTooLarge(f"KGB proxy: request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def _relay(
    request: web.Request, record: RequestRecord, upstream: Response, exchange: Exchange, metrics: ProxyMetrics
) -> web.StreamResponse:
    response, first = answer_for(upstream.status, upstream.reason, upstream.headers, upstream.take(), exchange)
    client_gone = upstream_done = False
    try:
        client_gone = not await _send(response.prepare(request))
        chunk = first
        while not client_gone:
            if upstream.at_eof():  # the last bytes, the exchange's end and the answer's end: one log write, one client write
                upstream_done = True
                client_gone = _gone(request)
                if chunk:
                    exchange.chunk(chunk, hold=True)
                exchange.end(client_disconnected=client_gone, upstream_complete=True)
                client_gone = not await _send(response.write_eof(chunk)) or client_gone
                break
            if chunk:
                exchange.chunk(chunk)
                client_gone = not await _send(response.write(chunk))
            chunk = await upstream.next()
    except (UpstreamError, aiohttp.ClientError, TimeoutError) as exc:
        log.warning("exchange %s: upstream stream broke: %s", record.exchange_id, exc)
        metrics.upstream_errors.labels(kind="stream_broken").inc()
        _abort(request)
    finally:
        if client_gone:
            log.info("exchange %s: client went away mid-response; closing the upstream request", record.exchange_id)
            upstream.close()
        exchange.end(client_disconnected=client_gone, upstream_complete=upstream_done)
        metrics.count_request(request.method, upstream.status)
    return response


def answer_for(
    status: int, reason: str, raw_headers: list[tuple[str, str]], first: bytes, exchange: Exchange
) -> tuple[web.StreamResponse, bytes]:
    """The client's response to the upstream's answer, its head recorded; `first`, the body bytes already
    here: when there are some, the head waits to leave with them (`HeadWithBody`)."""
    headers = end_to_end(raw_headers, header(raw_headers, "connection"), HOP_BY_HOP)
    response = (HeadWithBody if first else web.StreamResponse)(status=status, reason=reason)
    response.headers.extend([(name, value) for name, value in headers if name.lower() != "content-length"])
    length = content_length(raw_headers)
    if length is not None:
        response.content_length = length
    exchange.response_head(status, headers, with_chunk=bool(first))
    return response, first


class HeadWithBody(web.StreamResponse):
    """An answer whose first bytes came with the upstream's head: the head leaves with them, one write
    (and one wake-up of the client) in place of two, and nothing waits for it."""

    _send_headers_immediately = False  # what aiohttp's own web.Response sets, so its head goes with its body


async def _send(write: Awaitable[object]) -> bool:
    """Whether the client still takes bytes; a failed write is how a departure shows."""
    try:
        await write
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        return False
    return True


def _gone(request: web.Request) -> bool:
    """Whether a write to the client would fail now: aiohttp refuses one to a closing transport, and
    that is the only way a write fails before the bytes are handed on."""
    transport = request.transport
    return transport is None or transport.is_closing()


def decoded(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def _abort(request: web.Request) -> None:
    """The upstream broke after headers were sent: cut the client's connection so it sees a broken stream, not a clean end."""
    if request.transport is not None:
        request.transport.close()


def _fail(request: web.Request, exchange: Exchange, failure: errors.ProxyError) -> web.Response:
    app = request.app
    body = failure.body()
    exchange.response_head(failure.status, [("Content-Type", "application/json")], with_chunk=True)
    exchange.chunk(body, hold=True)  # the end follows at once, and both are in the log before the answer goes
    left = isinstance(failure, errors.ClientLeft)
    exchange.end(client_disconnected=left, upstream_complete=False, proxy_error=(failure.kind, str(failure)))
    app[METRICS].count_request(request.method, failure.status)
    if not isinstance(failure, errors.Refused):
        app[METRICS].upstream_errors.labels(kind=failure.kind).inc()
    log.warning("exchange %s: %s", exchange.label, failure)
    return web.Response(status=failure.status, body=body, content_type="application/json")


def health_text(settings: ProxySettings) -> str:
    """`/health`'s body, which never changes while the process runs: the listening side answers a plain
    ``GET /health`` with it itself (proxy/listen.py `quick_health`), so both must say the same."""
    return _dumps({"status": "healthy", "upstream": mask_url(settings.upstream_url)})


async def health(request: web.Request) -> web.Response:
    return web.json_response(text=health_text(request.app[SETTINGS]))


async def ready(request: web.Request) -> web.Response:
    """200 once it listens with room in the capture log; else 503, saying what it waits for (Kafka is the worker's:
    while it is away the log holds the exchanges)."""
    waiting = HEALTH.waiting_for()
    if request.app[WRITER].full:
        waiting = [*waiting, "room in the capture log (KGB_SPOOL_DIR, KGB_SPOOL_MAX_BYTES)"]
    body = {"status": "not_ready", "waiting_for": waiting} if waiting else {"status": "ready"}
    return web.json_response(body, status=503 if waiting else 200, dumps=_dumps)


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    metrics.show_log(request.app[WRITER])
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


async def _upstream_session(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    async with Pool(
        settings.upstream_connections,
        settings.connect_timeout,
        settings.read_timeout,
        idle_timeout=settings.upstream_idle_timeout,
    ) as pool:
        app[SESSION] = pool
        yield


async def capturing(app: web.Application) -> AsyncIterator[None]:
    """The process's capture-log writer (shared with the MCP app), and what appends to it."""
    settings = app[SETTINGS]
    async with capture_log(settings.capture.log()) as writer:
        app[WRITER] = writer
        app[TAP] = Tap(writer, HeaderPolicy.of(settings.redact_headers, fingerprint_key(settings, settings.capture.spool_dir)))
        app[MCP_SINK] = McpSink(writer)
        yield


def build_app(settings: ProxySettings, metrics: ProxyMetrics | None = None) -> web.Application:
    app = web.Application(
        client_max_size=settings.max_body_bytes, handler_args={"max_field_size": 65536}, middlewares=[_unrouted_too]
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or ProxyMetrics()
    app.cleanup_ctx.append(_upstream_session)
    app.cleanup_ctx.append(capturing)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_endpoint)
    everything = Everything()
    app.router.register_resource(everything)
    everything.add_route("*", forward)
    return app


class Everything(web.Resource):
    """Every path, under the others: what they do not take is relayed. The router tries it last for any path,
    by its canonical ``/``; it matches by saying yes, where a ``/{tail:...}`` route ran a regex over the path
    and unquoted it on every request, for a tail nothing reads."""

    @property
    def canonical(self) -> str:
        return "/"

    def url_for(self, **parts: str) -> URL:
        return URL("/")

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the relayed paths are all of them: a prefix would hide the rest")

    def get_info(self) -> _InfoDict:
        return {"path": "/"}

    def raw_match(self, path: str) -> bool:
        return False  # no route added later joins it

    def _match(self, path: str) -> dict[str, str]:
        return {}


@web.middleware
async def _unrouted_too(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The router matches paths only; a CONNECT's host:port or an OPTIONS `*` would get its bare, uncaptured 404."""
    if request.match_info.http_exception is not None:
        return await forward(request)
    return await handler(request)
