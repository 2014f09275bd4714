"""Reading `KGB_*` settings from the environment, in one place.

Every service builds its settings object with these helpers at start-up and
passes it down; nothing below the CLI reads the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar, get_args, get_type_hints
from urllib.parse import unquote_plus


class SettingsError(ValueError):
    """A `KGB_*` variable holds a value we cannot use; the message names it."""


def env_str(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name, default) or default


def env_opt(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or None


Number = TypeVar("Number", int, float)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def identifier(name: str, raw: str) -> str:
    """A plain PostgreSQL identifier (it becomes a schema name and a search_path); ``name``, the
    setting or flag it came from, is what the error names."""
    if not _IDENTIFIER.match(raw):
        raise SettingsError(f"{name} must be a plain identifier (letters, digits, _), got {raw!r}")
    return raw


def flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    """``true``/``false`` (also 1/0, yes/no, any case); anything else is refused by name."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def positive(name: str, value: int) -> int:
    """A count: at least 1."""
    if value < 1:
        raise SettingsError(f"{name} must be at least 1, got {value}")
    return value


def above_zero(name: str, value: Number) -> Number:
    """A size or a duration: above 0."""
    if not value > 0:
        raise SettingsError(f"{name} must be above 0, got {value}")
    return value


def share(name: str, value: float) -> float:
    if not 0 < value <= 1:
        raise SettingsError(f"{name} must be above 0 and at most 1, got {value}")
    return value


def positive_seconds(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{name} must be a number of seconds above 0, got {value}")
    return value


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


# Query parameters that carry a credential: masked when a URL is shown, redacted when one is captured.
CREDENTIAL_PARAMS = frozenset({"key", "api_key", "apikey", "token", "access_token", "secret", "password", "sslpassword"})


def mask_url(url: str) -> str:
    """The URL as it may be shown: a password, and the value of every query parameter named
    like a credential (``?password=``, ``?token=``), replaced by ****; all else as it was.
    Always a plain str: a `SecretURL` handed back as it came would print through this again, forever."""
    url = str(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min([i for i in map(rest.find, "/?#") if i >= 0], default=len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, host = authority.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    authority = f"{user}:****@{host}" if at and colon else authority
    path, question, query = tail.partition("?")
    query, hash_, fragment = query.partition("#")
    if question:
        query = "&".join(_mask_param(pair) for pair in query.split("&"))
    return f"{scheme}://{authority}{path}{question}{query}{hash_}{fragment}"


def _mask_param(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    return f"{name}=****" if equals and unquote_plus(name).lower() in CREDENTIAL_PARAMS else pair


class Secret(str):
    """A setting that is a secret: it works as the string it is, and prints as ``'****'``
    in any repr, so a settings object can be logged whole (its dataclass repr shows reprs)."""

    @property
    def masked(self) -> str:
        return "****"

    def __repr__(self) -> str:
        return repr(self.masked)


class SecretURL(Secret):
    """A URL that may carry credentials; its repr and `masked` show it through `mask_url`."""

    @property
    def masked(self) -> str:
        return str.__str__(mask_url(self))  # a plain str: a URL with nothing to mask comes back as itself


class HoldsSecrets:
    """A settings dataclass whose `Secret` and `SecretURL` fields hold those types whoever built
    it: `dataclasses.replace(settings, database_url="...")`, a test or a CLI override passes
    a plain string, which would print unmasked in the settings' repr."""

    def __post_init__(self) -> None:
        for name, hint in get_type_hints(type(self)).items():
            kind = next((kind for kind in (SecretURL, Secret) if hint is kind or kind in get_args(hint)), None)
            value = getattr(self, name, None)
            if kind is not None and isinstance(value, str) and not isinstance(value, kind):
                object.__setattr__(self, name, kind(value))


def env_url(env: Mapping[str, str], name: str, default: str) -> SecretURL:
    return SecretURL(env_str(env, name, default))


def env_secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env_opt(env, name)
    return None if value is None else Secret(value)


def shown(value: str | None) -> str:
    """A setting as a log line, a `/health` answer or an error message may show it."""
    if value is None:
        return "<unset>"
    return value.masked if isinstance(value, Secret) else value


@dataclass(frozen=True)
class KafkaSettings(HoldsSecrets):
    """Where events go and how they are framed; shared by the proxy and every consumer."""

    bootstrap: str = "127.0.0.1:9092"
    topic: str = "kgb.exchanges"
    mcp_topic: str = "kgb.mcp"
    schema_registry_url: SecretURL | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> KafkaSettings:
        return cls(
            bootstrap=env_str(env, "KGB_KAFKA_BOOTSTRAP", cls.bootstrap),
            topic=env_str(env, "KGB_TOPIC", cls.topic),
            mcp_topic=env_str(env, "KGB_MCP_TOPIC", cls.mcp_topic),
            schema_registry_url=_optional_url(env_opt(env, "KGB_SCHEMA_REGISTRY_URL")),
        )


def _optional_url(url: str | None) -> SecretURL | None:
    return None if url is None else SecretURL(url)
