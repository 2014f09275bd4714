"""The proxy's Prometheus metrics, served by the proxy itself at `/metrics`.

They live on their own `CollectorRegistry` (not prometheus_client's global
one) so every proxy and every test owns a fresh, independent set of counters.

The relay's capture side is the capture log: its size, whether it is full, and
how many appends it refused. Publishing is the capture worker's, another
process: its `kgb_worker_*` figures come from the file it keeps in the log's
directory (proxy/workerstats.py says why a file and not a port of its own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from proxy.workerstats import WorkerCollector

if TYPE_CHECKING:
    from proxy.logwriter import LogWriter

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ProxyMetrics:
    """Every metric of one proxy process, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.capture_dropped = Gauge(
            "kgb_capture_dropped_records",
            "Capture-log appends refused because the log was at KGB_SPOOL_MAX_BYTES (their exchanges were relayed, not captured).",
            registry=r,
        )
        self.spool_bytes = Gauge("kgb_spool_bytes", "Bytes in the capture log not yet published (and deleted).", registry=r)
        self.spool_full = Gauge("kgb_spool_full", "1 while the capture log is at KGB_SPOOL_MAX_BYTES.", registry=r)
        self.requests = Counter("kgb_requests", "Requests handled by the proxy.", ["method", "status"], registry=r)
        self.upstream_errors = Counter("kgb_upstream_errors", "Upstream failures seen by the proxy.", ["kind"], registry=r)
        self.worker = WorkerCollector()
        r.register(self.worker)
        self._request_counts: dict[tuple[str, int], Counter] = {}

    def count_request(self, method: str, status: int) -> None:
        """`requests` for one answer, its labelled child looked up once per method and status (`labels`
        validates and locks on every call: a few microseconds each exchange)."""
        child = self._request_counts.get((method, status))
        if child is None:
            child = self._request_counts[method, status] = self.requests.labels(method=method, status=str(status))
        child.inc()

    def show_log(self, writer: LogWriter) -> None:
        """The capture log's state, read when /metrics is scraped; the worker's figures are in its directory."""
        self.worker.directory = writer.settings.directory
        self.capture_dropped.set(writer.refused_records)
        self.spool_bytes.set(writer.pending_bytes)
        self.spool_full.set(1 if writer.full else 0)

    def render(self) -> bytes:
        """The text exposition format, for the `/metrics` handler (content type `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
