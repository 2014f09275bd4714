"""Settings of `kgb web`, read from `KGB_*` variables in one place."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass

from common.config import (
    HoldsSecrets,
    Secret,
    SecretURL,
    SettingsError,
    env_float,
    env_int,
    env_secret,
    env_str,
    env_url,
    identifier,
)


def is_loopback(host: str) -> bool:
    """Only a loopback address keeps the viewer to this machine; a name other than localhost may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebSettings(HoldsSecrets):
    """Where the viewer listens and what it reads.

    ``db_schema`` is winni's (``KGB_DB_SCHEMA``) and ``metrics_schema`` the
    metrics consumer's (``KGB_METRICS_SCHEMA``): the connection's search_path
    holds both, so the named queries stay unqualified, and cost columns show
    only when the metrics tables exist. ``token`` (``KGB_WEB_TOKEN``) is
    required when ``host`` is not a loopback address: captured traffic holds
    prompts, code and tool output, so anyone who can reach the port must
    prove they may read it. ``statement_timeout`` bounds any one query (a
    search for a very common word ranks every message holding it).
    """

    database_url: SecretURL = SecretURL("postgresql://postgres@127.0.0.1:5432/winni")
    db_schema: str = "kgb"
    metrics_schema: str = "kgb_metrics"
    host: str = "127.0.0.1"
    port: int = 8090
    token: Secret | None = None
    page_size: int = 50
    statement_timeout: float = 15.0
    pool_size: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_loopback(self.host) and not self.token:
            raise SettingsError(
                f"KGB_WEB_HOST={self.host} lets other machines connect: set KGB_WEB_TOKEN (a long random secret) "
                "to require it on every page, or listen on 127.0.0.1"
            )
        if self.token is not None and len(self.token) < 16:
            raise SettingsError("KGB_WEB_TOKEN must be at least 16 characters")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WebSettings:
        return cls(
            database_url=env_url(env, "KGB_DATABASE_URL", cls.database_url),
            db_schema=identifier("KGB_DB_SCHEMA", env_str(env, "KGB_DB_SCHEMA", cls.db_schema)),
            metrics_schema=identifier("KGB_METRICS_SCHEMA", env_str(env, "KGB_METRICS_SCHEMA", cls.metrics_schema)),
            host=env_str(env, "KGB_WEB_HOST", cls.host),
            port=env_int(env, "KGB_WEB_PORT", cls.port),
            token=env_secret(env, "KGB_WEB_TOKEN"),
            statement_timeout=env_float(env, "KGB_WEB_STATEMENT_TIMEOUT", cls.statement_timeout),
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"
