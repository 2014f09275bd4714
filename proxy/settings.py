"""The proxy's settings, read from `KGB_*` variables once at start-up."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from yarl import URL

from common.config import (
    HoldsSecrets,
    KafkaSettings,
    Secret,
    SecretURL,
    SettingsError,
    env_float,
    env_int,
    env_list,
    env_opt,
    env_secret,
    env_str,
    above_zero,
)
from proxy.logwriter import FsyncPolicy, LogSettings
from proxy.redact import BUILTIN_RULES, Rule, custom_rules
from proxy.upstream import IDLE_TIMEOUT


MiB = 1024 * 1024
COMPRESSIONS = {"zstd": "zstd", "lz4": "lz4", "gzip": "gzip", "none": None}


def default_spool_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_STATE_HOME/kgb/spool``, else ``~/.local/state/kgb/spool``: state that must
    survive restarts but is not configuration. Containers should mount a volume there."""
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "kgb" / "spool"


@dataclass(frozen=True)
class CaptureSettings:
    """The capture log (the relay appends, the worker tails) and the worker's Kafka side.

    `max_event_bytes` bounds one encoded event (key + value); the producer's
    max_request_size and a created topic's ``max.message.bytes`` are raised to
    match. `close_timeout` bounds the worker's shutdown: what Kafka has not
    acknowledged by then stays in the log for the next start.

    `linger_ms` and `batch_bytes` go together: the broker's cost is per produce request
    (bench/broker_bench.py), and a 500 KB request event alone filled the 1 MiB batches
    there were, so lingering gathered nothing. `batch_bytes` counts the records
    uncompressed and is capped at every topic's limit (`kafkalink.batch_bound`).
    """

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    spool_dir: Path = field(default_factory=lambda: default_spool_dir(os.environ))
    spool_max_bytes: int = 1024 * MiB
    segment_bytes: int = 64 * MiB
    fsync: FsyncPolicy = FsyncPolicy.INTERVAL
    fsync_interval: float = 1.0
    max_event_bytes: int = 64 * MiB
    compression: str = "zstd"
    linger_ms: int = 20
    batch_bytes: int = 4 * MiB
    topic_partitions: int = 6
    topic_replication: int = 1
    close_timeout: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> CaptureSettings:
        compression = env_str(env, "KGB_KAFKA_COMPRESSION", cls.compression).lower()
        if compression not in COMPRESSIONS:
            raise SettingsError(f"KGB_KAFKA_COMPRESSION must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        fsync = env_str(env, "KGB_CAPTURE_FSYNC", cls.fsync.value).lower()
        if fsync not in {policy.value for policy in FsyncPolicy}:
            raise SettingsError(f"KGB_CAPTURE_FSYNC must be one of none, interval, always, got {fsync!r}")
        spool_dir = env_opt(env, "KGB_SPOOL_DIR")
        return cls(
            kafka=KafkaSettings.from_env(env),
            spool_dir=Path(spool_dir).expanduser() if spool_dir else default_spool_dir(env),
            spool_max_bytes=above_zero("KGB_SPOOL_MAX_BYTES", env_int(env, "KGB_SPOOL_MAX_BYTES", cls.spool_max_bytes)),
            segment_bytes=above_zero("KGB_CAPTURE_SEGMENT_BYTES", env_int(env, "KGB_CAPTURE_SEGMENT_BYTES", cls.segment_bytes)),
            fsync=FsyncPolicy(fsync),
            fsync_interval=above_zero(
                "KGB_CAPTURE_FSYNC_INTERVAL", env_float(env, "KGB_CAPTURE_FSYNC_INTERVAL", cls.fsync_interval)
            ),
            max_event_bytes=env_int(env, "KGB_MAX_EVENT_BYTES", cls.max_event_bytes),
            compression=compression,
            linger_ms=env_int(env, "KGB_KAFKA_LINGER_MS", cls.linger_ms),
            batch_bytes=above_zero("KGB_KAFKA_BATCH_BYTES", env_int(env, "KGB_KAFKA_BATCH_BYTES", cls.batch_bytes)),
            topic_partitions=env_int(env, "KGB_TOPIC_PARTITIONS", cls.topic_partitions),
            topic_replication=env_int(env, "KGB_TOPIC_REPLICATION", cls.topic_replication),
            close_timeout=env_float(env, "KGB_SHUTDOWN_TIMEOUT", cls.close_timeout),
        )

    def log(self) -> LogSettings:
        return LogSettings(self.spool_dir, self.spool_max_bytes, self.segment_bytes, self.fsync, self.fsync_interval)


@dataclass(frozen=True)
class ProxySettings(HoldsSecrets):
    """The relays' settings.

    `upstream_idle_timeout` is below the keep-alive timeouts servers commonly close idle connections at
    (5 s in Node's http server and many others, 75 s in nginx; httpx's client lets go at 5 s): when the
    upstream closes a connection at its timeout just as a request goes on it, a POST without an
    Idempotency-Key is not sent again (proxy/upstream.py), so its client gets a 502. The upstream counts from
    its answer's last byte, the pool from when it read it, a trip later: a second's margin covers that. Letting
    the connection go first costs a new connection (and TLS handshake) after an idle spell instead.
    """

    upstream_url: SecretURL = SecretURL("https://api.anthropic.com")
    host: str = "127.0.0.1"
    port: int = 8089
    max_body_bytes: int = 64 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    upstream_connections: int = 256
    upstream_idle_timeout: float = IDLE_TIMEOUT
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000
    redact_headers: frozenset[str] = frozenset()
    redact_patterns: tuple[str, ...] = field(default=(), repr=False)  # a pattern may spell the secret it removes
    fingerprint_key: Secret | None = None
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    mcp_port: int = 9000
    mcp_upstreams: dict[str, SecretURL] = field(default_factory=dict)
    mcp_max_message_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ProxySettings:
        upstream = env_str(env, "KGB_UPSTREAM_URL", cls.upstream_url).rstrip("/")
        if not upstream.startswith(("http://", "https://")):
            raise SettingsError(f"KGB_UPSTREAM_URL must be an http(s) URL, got {upstream!r}")
        return cls(
            upstream_url=SecretURL(upstream),
            host=env_str(env, "KGB_PROXY_HOST", cls.host),
            port=env_int(env, "KGB_PROXY_PORT", cls.port),
            max_body_bytes=env_int(env, "KGB_MAX_BODY_BYTES", cls.max_body_bytes),
            connect_timeout=env_float(env, "KGB_UPSTREAM_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=env_float(env, "KGB_UPSTREAM_READ_TIMEOUT", cls.read_timeout),
            upstream_connections=env_int(env, "KGB_UPSTREAM_CONNECTIONS", cls.upstream_connections),
            upstream_idle_timeout=above_zero(
                "KGB_UPSTREAM_IDLE_TIMEOUT", env_float(env, "KGB_UPSTREAM_IDLE_TIMEOUT", cls.upstream_idle_timeout)
            ),
            header_timeout=above_zero("KGB_HEADER_TIMEOUT", env_float(env, "KGB_HEADER_TIMEOUT", cls.header_timeout)),
            keepalive_timeout=above_zero("KGB_KEEPALIVE_TIMEOUT", env_float(env, "KGB_KEEPALIVE_TIMEOUT", cls.keepalive_timeout)),
            max_connections=above_zero("KGB_MAX_CONNECTIONS", env_int(env, "KGB_MAX_CONNECTIONS", cls.max_connections)),
            redact_headers=frozenset(name.lower() for name in env_list(env, "KGB_REDACT_HEADERS")),
            redact_patterns=_patterns_file(env_opt(env, "KGB_REDACT_PATTERNS_FILE")),
            fingerprint_key=env_secret(env, "KGB_FINGERPRINT_KEY"),
            capture=CaptureSettings.from_env(env),
            mcp_port=env_int(env, "KGB_MCP_PORT", cls.mcp_port),
            mcp_upstreams=parse_upstreams(env.get("KGB_MCP_UPSTREAMS", "")),
            mcp_max_message_bytes=env_int(env, "KGB_MCP_MAX_MESSAGE_BYTES", cls.mcp_max_message_bytes),
        )

    def rules(self) -> tuple[Rule, ...]:
        return BUILTIN_RULES + custom_rules(self.redact_patterns)


def parse_upstreams(raw: str) -> dict[str, SecretURL]:
    """`KGB_MCP_UPSTREAMS`, ``name=ws://host:port,name=http://host:port/mcp,...``: the only places the
    MCP relays connect to, so a client can name an upstream but never choose an address. A ws(s) URL is
    a WebSocket server, an http(s) URL a Streamable HTTP endpoint."""
    upstreams: dict[str, SecretURL] = {}
    for entry in (item.strip() for item in raw.split(",")):
        if not entry:
            continue
        name, sep, url = (part.strip() for part in entry.partition("="))
        if not sep or not name:
            raise SettingsError(f"KGB_MCP_UPSTREAMS entries must look like name=ws://host:port, got {entry!r}")
        if name in upstreams:
            raise SettingsError(f"KGB_MCP_UPSTREAMS names {name!r} twice")
        try:
            parsed = URL(url)
        except ValueError:
            parsed = URL()
        if parsed.scheme not in ("ws", "wss", "http", "https") or not parsed.host:
            raise SettingsError(f"KGB_MCP_UPSTREAMS: {name} must be a ws://, wss://, http:// or https:// URL, got {url!r}")
        if "/" in name:
            raise SettingsError(f"KGB_MCP_UPSTREAMS: a name is one path segment of /mcp/NAME, got {name!r}")
        upstreams[name] = SecretURL(url)
    return upstreams


def _patterns_file(path: str | None) -> tuple[str, ...]:
    """One regular expression per line; blank lines and `#` comments ignored."""
    if not path:
        return ()
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise SettingsError(f"KGB_REDACT_PATTERNS_FILE: cannot read {path}: {exc}") from None
    return tuple(line for line in lines if line.strip() and not line.lstrip().startswith("#"))


def fingerprint_key(settings: ProxySettings, state_dir: Path) -> bytes:
    """The HMAC key for API-key fingerprints.

    Fingerprints only group traffic if they are stable, so without
    KGB_FINGERPRINT_KEY a random key is created once and kept beside the spool.
    """
    if settings.fingerprint_key:
        return settings.fingerprint_key.encode()
    path = state_dir / "fingerprint.key"
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip().encode()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()
