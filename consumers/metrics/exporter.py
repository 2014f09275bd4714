"""Prometheus metrics of token usage and cost, and the small HTTP app that serves them.

Names follow the OpenTelemetry GenAI semantic conventions where they exist
(``gen_ai.client.token.usage``, ``gen_ai.client.operation.duration``,
``gen_ai.client.operation.time_to_first_chunk``, attributes
``gen_ai.request.model``, ``gen_ai.token.type``, ``gen_ai.operation.name``,
``gen_ai.provider.name``, ``error.type``), dots as underscores the way the
OpenTelemetry Prometheus exporter writes them, with the semantic conventions'
bucket boundaries. What they do not cover (cost, unpriced usage, request and
error counts by conversation kind, what the API billed beyond base rates, stop
reasons and content blocks) is ``kgb_*``. MCP calls follow the OpenTelemetry
MCP conventions (``mcp.client.operation.duration``, its attributes and buckets).

A model the price table lacks is reported loudly, once per model and process:
a WARNING naming it and the fix, ``kgb_unpriced_requests_total`` from then on,
and a line in `kgb usage`.

The session is deliberately not a label: one series per session grows
without bound; per-session numbers are in the rollup tables (`kgb usage`).
Each exchange is observed once, after the transaction that completed its
row has committed, so these counters agree with the tables from the
moment the consumer starts (they begin at 0 on each start, as counters do).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from consumers.metrics.mcp import Counted
from common.outages import HEALTH
from consumers.metrics.rollup import TOKEN_TYPES, Priced

log = logging.getLogger(__name__)

PROVIDER = "anthropic"
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
SECONDS_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
MODEL_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "kgb_kind")
# OpenTelemetry's MCP conventions: mcp.method.name, gen_ai.tool.name, mcp.protocol.version, network.transport
# (pipe for stdio, tcp otherwise), and the server's KGB name; mcp.session.id is in the tables, not in labels.
MCP_LABELS = ("mcp_method_name", "gen_ai_tool_name", "mcp_protocol_version", "network_transport", "kgb_mcp_server")
MCP_SECONDS_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class UsageMetrics:
    """The consumer's instruments, in their own registry (one per consumer, so tests can run several)."""

    def __init__(self, prices_version: str = "") -> None:
        self.prices_version = prices_version
        self.reported: set[str] = set()  # what had no price and was logged already
        self.registry = CollectorRegistry()
        r = self.registry
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Tokens used per model call, by gen_ai_token_type (Anthropic's "
            "meaning: input excludes cache reads and writes, which have types of their own)",
            (*MODEL_LABELS, "gen_ai_token_type"),
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Time from the request reaching the proxy to the response's end",
            (*MODEL_LABELS, "error_type"),
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk_seconds",
            "Time from the request reaching the proxy to the first response byte sent to the client",
            MODEL_LABELS,
            buckets=SECONDS_BUCKETS,
            registry=r,
        )
        self.requests = Counter("kgb_requests_total", "Exchanges counted", MODEL_LABELS, registry=r)
        self.errors = Counter(
            "kgb_errors_total", "Exchanges that failed, by error type", (*MODEL_LABELS, "error_type"), registry=r
        )
        self.interrupted = Counter(
            "kgb_interrupted_total",
            "Responses cut short without an error (client gone, stream broken)",
            MODEL_LABELS,
            registry=r,
        )
        self.web_searches = Counter("kgb_web_search_requests_total", "Server-side web searches billed", MODEL_LABELS, registry=r)
        self.web_fetches = Counter(
            "kgb_web_fetch_requests_total", "Server-side web fetches (no charge beyond their tokens)", MODEL_LABELS, registry=r
        )
        self.thinking = Counter(
            "kgb_thinking_tokens_total", "Output tokens spent thinking (part of the output tokens)", MODEL_LABELS, registry=r
        )
        self.premiums = Counter(
            "kgb_premium_requests_total",
            "Requests billed beyond base rates, by kgb_pricing: long_context, fast, us_only, batch",
            (*MODEL_LABELS, "kgb_pricing"),
            registry=r,
        )
        self.compactions = Counter(
            "kgb_compactions_total", "Server-side compactions (usage.iterations)", MODEL_LABELS, registry=r
        )
        self.stop_reasons = Counter(
            "kgb_stop_reasons_total", "Responses by stop reason", (*MODEL_LABELS, "stop_reason"), registry=r
        )
        self.blocks = Counter(
            "kgb_content_blocks_total", "Reply content blocks by type", (*MODEL_LABELS, "block_type"), registry=r
        )
        self.cost = Counter("kgb_cost_usd_total", "Cost in USD at the price table's rates", MODEL_LABELS, registry=r)
        self.unpriced = Counter(
            "kgb_unpriced_tokens_total",
            "Tokens of models the price table lacks (their cost is not in kgb_cost_usd_total)",
            (*MODEL_LABELS, "gen_ai_token_type"),
            registry=r,
        )
        self.unpriced_requests = Counter(
            "kgb_unpriced_requests_total",
            "Requests with billable usage the price table has no price for, by kgb_unpriced "
            "(the model, or the model and the mode)",
            (*MODEL_LABELS, "kgb_unpriced"),
            registry=r,
        )
        self.rejected = Counter("kgb_metrics_rejected_total", "Messages that did not decode", ("error_class",), registry=r)
        self.mcp_duration = Histogram(
            "mcp_client_operation_duration_seconds",
            "MCP request to its answer, as the KGB relay forwarded them",
            (*MCP_LABELS, "error_type"),
            buckets=MCP_SECONDS_BUCKETS,
            registry=r,
        )
        self.mcp_calls = Counter("kgb_mcp_calls_total", "MCP requests answered", MCP_LABELS, registry=r)
        self.mcp_errors = Counter(
            "kgb_mcp_errors_total",
            "MCP requests answered with a JSON-RPC error (its code) or a tool result with isError (tool_error)",
            (*MCP_LABELS, "error_type"),
            registry=r,
        )

    def observe(self, priced: Iterable[Priced]) -> None:
        for p in priced:
            self._observe(p)

    def observe_mcp(self, calls: Iterable[Counted]) -> None:
        for call in calls:
            labels = mcp_labels(call)
            self.mcp_calls.labels(*labels).inc()
            self.mcp_duration.labels(*labels, call.error_type or "").observe(call.duration_ms / 1000)
            if call.error_type:
                self.mcp_errors.labels(*labels, call.error_type).inc()

    def _observe(self, p: Priced) -> None:
        e, usage = p.exchange, p.exchange.usage
        labels = ("count_tokens" if e.kind == "count_tokens" else "chat", PROVIDER, e.model or "", e.kind)
        self.requests.labels(*labels).inc()
        if e.duration_ms is not None:
            self.duration.labels(*labels, e.error_type or "").observe(e.duration_ms / 1000)
        if e.ttfb_ms is not None:
            self.first_chunk.labels(*labels).observe(e.ttfb_ms / 1000)
        if e.error_type:
            self.errors.labels(*labels, e.error_type).inc()
        if e.interrupted:
            self.interrupted.labels(*labels).inc()
        if e.stop_reason:
            self.stop_reasons.labels(*labels, e.stop_reason).inc()
        for block, n in e.blocks.items():
            self.blocks.labels(*labels, block).inc(n)
        for counter, n in (
            (self.web_searches, usage.web_search_requests),
            (self.web_fetches, usage.web_fetch_requests),
            (self.thinking, usage.thinking),
            (self.compactions, usage.compactions),
        ):
            if n:
                counter.labels(*labels).inc(n)
        for premium in ("long_context", "fast", "us_only", "batch"):
            if getattr(p.cost, premium):
                self.premiums.labels(*labels, premium).inc()
        if p.cost.usd:
            self.cost.labels(*labels).inc(float(p.cost.usd))
        for missing in p.cost.unpriced:
            self.unpriced_requests.labels(*labels, missing).inc()
            self._report(missing)
        if not e.has_usage:
            return
        tokens = usage.tokens
        for name, token_type in TOKEN_TYPES.items():
            n = getattr(tokens, name)
            self.tokens.labels(*labels, token_type).observe(n)
            if p.unpriced and n:
                self.unpriced.labels(*labels, token_type).inc(n)

    def _report(self, missing: str) -> None:
        """Once per model (or model and mode) and process: its cost is unknown until the table prices it."""
        if missing in self.reported:
            return
        self.reported.add(missing)
        log.warning(
            "no price for %s in the price table (%s): its requests are counted, their cost is unknown and every total "
            "including them says so; price it in a KGB_PRICES file and rebuild the metrics tables with a fresh "
            "KGB_METRICS_GROUP and KGB_METRICS_SCHEMA (README, Token usage and cost)",
            missing,
            self.prices_version or "shipped",
        )


def mcp_labels(call: Counted) -> tuple[str, ...]:
    tool = call.tool if call.method == "tools/call" and call.tool else ""
    network = "pipe" if call.transport == "stdio" else "tcp"
    return (call.method, tool, call.protocol_version or "", network, call.server)


def metrics_app(metrics: UsageMetrics) -> web.Application:
    """``GET /metrics`` in Prometheus's text format, ``GET /health``, and ``GET /ready``: 200 once
    consuming with nothing away, else 503 naming what it waits for (`common.outages.HEALTH`)."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    async def ready(request: web.Request) -> web.Response:
        waiting = HEALTH.waiting_for()
        body = {"status": "not_ready", "waiting_for": waiting} if waiting else {"status": "ready"}
        return web.json_response(body, status=503 if waiting else 200)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    return app
