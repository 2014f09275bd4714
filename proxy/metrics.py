"""The proxy's Prometheus metrics, served by the proxy itself at `/metrics`.

They live on their own `CollectorRegistry` (not prometheus_client's global
one) so every proxy and every test owns a fresh, independent set of counters.

Accounting of events, so an operator can tell nothing went missing:
submitted = published + dropped + too_large + (still queued, in flight or spooled).
`kgb_events_spooled_total` counts events written to the disk spool; they are
counted as published again once the spool delivers them.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ProxyMetrics:
    """Every metric of one proxy process, on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_submitted = Counter(
            "kgb_events_submitted", "Capture events handed to the publisher.", registry=r
        )
        self.events_published = Counter(
            "kgb_events_published", "Events acknowledged by Kafka (acks=all).", registry=r
        )
        self.events_spooled = Counter(
            "kgb_events_spooled", "Events written to the disk spool because Kafka was slow or down.", registry=r
        )
        self.events_dropped = Counter(
            "kgb_events_dropped",
            "Events lost: the spool was full, the queue was full, or the event could not be encoded.",
            ["reason"],
            registry=r,
        )
        self.events_too_large = Counter(
            "kgb_events_too_large",
            "Events over KGB_MAX_EVENT_BYTES, kept in the spool's rejected/ directory instead of Kafka.",
            registry=r,
        )
        self.publish_errors = Counter(
            "kgb_publish_errors", "Failed Kafka sends, connects and spool records skipped as corrupt.", ["kind"], registry=r
        )
        self.spool_bytes = Gauge("kgb_spool_bytes", "Bytes in the disk spool not yet delivered.", registry=r)
        self.spool_full = Gauge("kgb_spool_full", "1 while the disk spool is at KGB_SPOOL_MAX_BYTES.", registry=r)
        self.queue_depth = Gauge("kgb_queue_depth", "Events waiting in the in-memory queue.", registry=r)
        self.requests = Counter(
            "kgb_requests", "Requests handled by the proxy.", ["method", "status"], registry=r
        )
        self.upstream_errors = Counter(
            "kgb_upstream_errors", "Upstream failures seen by the proxy.", ["kind"], registry=r
        )

    def render(self) -> bytes:
        """The text exposition format, for the `/metrics` handler (content type `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
