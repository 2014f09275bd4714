"""Reading `KGB_*` settings from the environment, in one place.

Every service builds its settings object with these helpers at start-up and
passes it down; nothing below the CLI reads the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from urllib.parse import urlsplit, urlunsplit


class SettingsError(ValueError):
    """A `KGB_*` variable holds a value we cannot use; the message names it."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default) or default


def env_opt(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def env_list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(item.strip() for item in env.get(name, "").split(",") if item.strip())


def mask(secret: str | None) -> str:
    """How a secret prints in logs and `--help`: present or not, never its value."""
    return "<unset>" if not secret else "****"


def mask_url(url: str) -> str:
    """The URL as it may be printed: a password, if any, replaced by ****."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:****@{host}{port}"))



@dataclass(frozen=True)
class KafkaSettings:
    """Where events go and how they are framed; shared by the proxy and every consumer."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "kgb.exchanges"
    mcp_topic: str = "kgb.mcp"
    schema_registry_url: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KafkaSettings:
        return cls(
            bootstrap=env_str(env, "KGB_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic=env_str(env, "KGB_TOPIC", cls.topic),
            mcp_topic=env_str(env, "KGB_MCP_TOPIC", cls.mcp_topic),
            schema_registry_url=env_opt(env, "KGB_SCHEMA_REGISTRY_URL"),
        )

    def masked(self) -> KafkaSettings:
        """These settings as they may be printed: a password in the registry URL replaced by ****."""
        registry = self.schema_registry_url
        return replace(self, schema_registry_url=registry and mask_url(registry))
