"""`is_transient`: the one place that tells the world's failures from the data's."""

from __future__ import annotations


import asyncpg
import pytest

from consumers.errors import InvalidEvent, TransientError, is_transient
from schemas.errors import RegistryError


def raised_while_handling(outer: Exception, inner: Exception) -> Exception:
    """``outer`` as Python makes it when raised in an ``except`` block handling ``inner``."""
    try:
        try:
            raise inner
        except Exception:
            raise outer  # noqa: B904 - the implicit chaining (__context__) is what this builds
    except Exception as exc:
        return exc


# What a PostgreSQL restart raised in a consumer's batch, as asyncpg 0.29-0.32 words it.
RESTART_SHAPES = [
    ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    ConnectionResetError(104, "Connection reset by peer"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    raised_while_handling(
        asyncpg.InterfaceError("cannot call Transaction.__aexit__(): the underlying connection is closed"),
        asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    ),
    raised_while_handling(asyncpg.InterfaceError("cannot release a connection"), ConnectionResetError(104, "reset")),
    TimeoutError(),
    TransientError("Dewey away"),
    RegistryError("registry down", status=503),
]

# The data's or the code's fault: retrying the same batch can never succeed.
LASTING = [
    asyncpg.UniqueViolationError("duplicate key"),
    asyncpg.DataError("invalid input for query argument $1"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    raised_while_handling(asyncpg.DataError("bad value"), ConnectionResetError(104, "reset")),
    asyncpg.InternalClientError("PoolConnectionHolder.release() called on a free connection holder"),
    asyncpg.OutdatedSchemaCacheError("cached statement plan is invalid"),
    InvalidEvent("no request"),
    RegistryError("schema 7 not found", status=404, error_code=40403),
    ValueError("bug"),
]


@pytest.mark.parametrize("exc", RESTART_SHAPES, ids=lambda e: f"{type(e).__name__}: {e}"[:70])
def test_every_shape_of_a_database_restart_is_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize("exc", LASTING, ids=lambda e: f"{type(e).__name__}: {e}"[:70])
def test_failures_of_the_data_or_the_code_are_not(exc: Exception) -> None:
    assert not is_transient(exc)
