"""Errors of the consumers, and the one place that decides what is worth retrying.

    ConsumerError               base of every error raised by `consumers`
    ├── TransientError          the batch may succeed later (database, registry or broker away):
    │                           retry it with backoff, commit nothing meanwhile
    ├── InvalidEvent            the event decoded but breaks the contract (a request event
    │                           without its request, an exchange id that is not a UUID):
    │                           dead-letter it, go on
    └── MigrationError          the SQL migrations cannot be applied: stop loudly

Outside exceptions (asyncpg, OSError, the registry's `RegistryError`) are not
wrapped where they happen; `is_transient` classifies them here, once, so the
retry loop in `consumers.source` and the dead-letter fallback in each consumer
agree on which failures are the data's fault and which are the world's.

A PostgreSQL restart reaches a consumer in many shapes, depending on where its
batch was when the server went: a refused or reset socket (OSError), a
connection error (SQLSTATE 08) or shutdown (57P01-57P03) from the server, or
one of asyncpg's own client errors, which carry no SQLSTATE:
``InterfaceError`` ("cannot call Transaction.__aexit__(): the underlying
connection is closed", raised while the batch's own failure is being handled)
and ``InternalClientError`` ("cannot switch to state 15; another operation (2)
is in progress": a statement started while the server's goodbye was being
read). Those two are transient when their words say the connection is gone or
the protocol fell out of step, or when they were raised while handling a
transient failure; any other (a misused connection, a value asyncpg cannot
encode, which is `DataError`) is not. The pool then replaces the broken
connection on its next acquire, so retrying the batch is all it takes.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka.errors import KafkaError, KafkaTimeoutError

from common.failures import ExpectedFailure
from schemas.errors import RegistryError

# SQLSTATE classes and codes that describe the server's state, not the data sent:
# 08 connection exception, 53 insufficient resources, 40 transaction rollback
# (serialization failure, deadlock), 57P01-57P03 admin/crash shutdown, cannot connect now.
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "40")
_TRANSIENT_SQLSTATES = ("57P01", "57P02", "57P03")
# asyncpg's words, in client errors without a SQLSTATE, for a connection the server dropped.
_CONNECTION_LOST = ("connection is closed", "connection was closed", "cannot switch to state")


class ConsumerError(ExpectedFailure):
    """Base of every error raised by the `consumers` package."""


class TransientError(ConsumerError):
    """A handler's own way to say "try this batch again later"."""


class InvalidEvent(ConsumerError):
    """A decoded event that cannot be stored as it is; the message says why."""


class MigrationError(ConsumerError):
    """The database's migration history conflicts with the migrations shipped here."""


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same work later can succeed without changing it."""
    if isinstance(exc, (TransientError, OSError, asyncio.TimeoutError)):
        return True
    if isinstance(exc, RegistryError):
        return exc.retriable
    if isinstance(exc, KafkaError):  # the broker away or electing: aiokafka marks what a retry can cure
        return exc.retriable or isinstance(exc, KafkaTimeoutError)
    if isinstance(exc, asyncpg.PostgresError):
        return _transient_sqlstate(exc.sqlstate)
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
        return _connection_lost(exc)
    return False


def _connection_lost(exc: asyncpg.InterfaceError | asyncpg.InternalClientError) -> bool:
    """An asyncpg client error that is the echo of a lost connection, not of a misuse or of the data."""
    if isinstance(exc, (asyncpg.DataError, asyncpg.ClientConfigurationError)):
        return False
    message = str(exc)
    if any(words in message for words in _CONNECTION_LOST):
        return True
    return exc.__context__ is not None and is_transient(exc.__context__)


def _transient_sqlstate(sqlstate: str | None) -> bool:
    if not sqlstate:
        return False
    return sqlstate[:2] in _TRANSIENT_SQLSTATE_CLASSES or sqlstate in _TRANSIENT_SQLSTATES
