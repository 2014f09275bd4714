"""The proxy's settings, read from `KGB_*` variables once at start-up."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from yarl import URL

from kgb.config import Secret, SecretURL, SettingsError, env_float, env_int, env_list, env_opt, env_secret, env_str
from proxy.publish import PublishSettings
from proxy.redact import BUILTIN_RULES, Rule, custom_rules

T = TypeVar("T", int, float)


@dataclass(frozen=True)
class ProxySettings:
    upstream_url: SecretURL = SecretURL("https://api.anthropic.com")
    host: str = "127.0.0.1"
    port: int = 8089
    max_body_bytes: int = 64 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    upstream_connections: int = 256
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 10_000
    redact_headers: frozenset[str] = frozenset()
    redact_patterns: tuple[str, ...] = field(default=(), repr=False)  # a pattern may spell the secret it removes
    fingerprint_key: Secret | None = None
    publish: PublishSettings = field(default_factory=PublishSettings)
    mcp_port: int = 9000
    mcp_upstreams: dict[str, SecretURL] = field(default_factory=dict)
    mcp_max_message_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        """`kgb proxy --upstream` puts a plain string here; it stays a SecretURL, so it prints masked."""
        object.__setattr__(self, "upstream_url", SecretURL(self.upstream_url))

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
            header_timeout=_positive(env_float(env, "KGB_HEADER_TIMEOUT", cls.header_timeout), "KGB_HEADER_TIMEOUT"),
            keepalive_timeout=_positive(env_float(env, "KGB_KEEPALIVE_TIMEOUT", cls.keepalive_timeout), "KGB_KEEPALIVE_TIMEOUT"),
            max_connections=_positive(env_int(env, "KGB_MAX_CONNECTIONS", cls.max_connections), "KGB_MAX_CONNECTIONS"),
            redact_headers=frozenset(name.lower() for name in env_list(env, "KGB_REDACT_HEADERS")),
            redact_patterns=_patterns_file(env_opt(env, "KGB_REDACT_PATTERNS_FILE")),
            fingerprint_key=env_secret(env, "KGB_FINGERPRINT_KEY"),
            publish=PublishSettings.from_env(env),
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


def _positive(value: T, name: str) -> T:
    if value <= 0:
        raise SettingsError(f"{name} must be above 0, got {value}")
    return value


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
