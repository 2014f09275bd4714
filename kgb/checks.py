"""Start-up checks every command shares: `KGB_*` names that look mistyped, URLs of the wrong kind.

A mistyped variable is otherwise silently ignored, and the service starts on
its defaults (pointed at the real API, say); a URL without its scheme is
accepted and fails at the first request, far from its cause. Both are caught
here, before anything listens or connects.

The known names are the ones the product's code reads (every `"KGB_..."`
literal in its packages, as the README test finds them), so a new setting is
known the moment it is read, plus those only the scripts and tests read.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

from common.config import SettingsError

PRODUCT_PACKAGES = ("kgb", "common", "proxy", "consumers", "schemas", "web")
# Read by scripts/ (dev.sh, kafka.py, install-claude-code.sh) and tests/, never by `kgb` itself.
TOOL_SETTINGS = frozenset(
    {
        "KGB_CACHE_DIR",
        "KGB_CHROMIUM",
        "KGB_CLAUDE_BIN",
        "KGB_CLAUDE_CODE_PREFIX",
        "KGB_CLAUDE_CODE_VERSION",
        "KGB_DEV_DIR",
        "KGB_DEV_KAFKA_PORT",
        "KGB_DEV_POSTGRES_PORT",
        "KGB_TEST_DATABASE_URL",
        "KGB_TEST_KAFKA_BOOTSTRAP",
        "KGB_TEST_SERVICES",
        "KGB_WEB_ARTIFACTS",
    }
)
SETTING = re.compile(r'"(KGB_[A-Z0-9_]+)"')
SIMILAR = 0.75  # difflib ratio; every name shares "KGB_", so the default 0.6 suggests nonsense

DATABASE_SCHEMES = ("postgresql", "postgres")
HTTP_SCHEMES = ("http", "https")
WEBSOCKET_SCHEMES = ("ws", "wss")


@cache
def known_settings() -> frozenset[str]:
    names = set(TOOL_SETTINGS)
    for package in PRODUCT_PACKAGES:
        spec = importlib.util.find_spec(package)
        for folder in (spec and spec.submodule_search_locations) or ():
            for source in Path(folder).rglob("*.py"):
                names.update(SETTING.findall(source.read_text(encoding="utf-8")))
    return frozenset(names)


def unknown_settings(env: Mapping[str, str], known: Iterable[str]) -> list[str]:
    """A warning for each `KGB_*` variable no code reads, naming the closest one that is read."""
    known = sorted(known)
    warnings = []
    for name in sorted(n for n in env if n.startswith("KGB_") and n not in known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=SIMILAR)
        hint = f"; did you mean {close[0]}?" if close else "; the README lists every setting"
        warnings.append(f"{name} is not a KGB setting and is ignored{hint}")
    return warnings


def check_url(value: str, setting: str, schemes: tuple[str, ...], *, needs_host: bool = True) -> str:
    """``value`` when it is a URL with one of ``schemes`` (and a host); else an error naming ``setting``."""
    parts = urlsplit(value)
    example = f"{schemes[0]}://HOST:PORT"
    if parts.scheme not in schemes:
        raise SettingsError(f"{setting} must be a {' or '.join(s + '://' for s in schemes)} URL (like {example}), got {value!r}")
    if needs_host and not parts.hostname:
        raise SettingsError(f"{setting} has no host, got {value!r}; write it like {example}")
    return value


def check_database_url(value: str) -> str:
    """Host-less is fine for PostgreSQL (a Unix socket: postgresql:///winni)."""
    return check_url(value, "KGB_DATABASE_URL", DATABASE_SCHEMES, needs_host=False)


def check_bootstrap(value: str) -> str:
    """KGB_KAFKA_BOOTSTRAP: comma-separated host:port, no scheme (aiokafka would read one as a host)."""
    for entry in (part.strip() for part in value.split(",")):
        host, colon, port = entry.rpartition(":")
        if "/" in entry or not colon or not host or not port.isdigit():
            raise SettingsError(f"KGB_KAFKA_BOOTSTRAP must be HOST:PORT[,HOST:PORT...] without a scheme, got {value!r}")
    return value
