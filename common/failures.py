"""Expected failures as one line: what went wrong, the setting that decides it, the fix.

A user who mistyped a database name needs that sentence, not forty lines of
asyncpg's stack; a bug needs its stack. `explain` tells the two apart, once,
for the `kgb` command and the worker processes a consumer spawns;
``--debug`` keeps every traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from common.config import SettingsError


class ExpectedFailure(Exception):
    """Base of the errors whose message is the whole story for the user: a service's own (`consumers.errors`) derive from it."""


def explain(exc: BaseException) -> str | None:
    """The line for a failure a setting or a running service fixes; None for anything else (a bug).

    The clients are imported here, not at the top: `kgb --help` and the stdio shim start without them.
    """
    import asyncpg
    from aiokafka.errors import KafkaConnectionError

    if isinstance(exc, (SettingsError, ExpectedFailure)):
        return str(exc)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"PostgreSQL says: {exc}; fix the database name in KGB_DATABASE_URL"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"PostgreSQL refused the login: {exc}; fix the user or password in KGB_DATABASE_URL"
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return f"KGB_DATABASE_URL cannot be used: {exc}"
    if isinstance(exc, KafkaConnectionError):
        return f"cannot reach Kafka ({exc}); start the broker or fix KGB_KAFKA_BOOTSTRAP"
    return None


def exit_code(exc: BaseException) -> int:
    """2 for a setting the user must change (as argparse exits on a bad flag), 1 for the rest."""
    return 2 if isinstance(exc, SettingsError) else 1


def run_explained(name: str, body: Callable[[], None], debug: bool) -> None:
    """``body()``; an expected failure ends the process with its one line on stderr, a bug with its traceback."""
    try:
        body()
    except Exception as exc:
        line = None if debug else explain(exc)
        if line is None:
            raise
        print(f"{name}: {line}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code(exc)) from None
