"""Errors of the Dewey consumer, and which of them are worth retrying.

    ConsumerError                       (consumers.errors)
    ├── TransientError
    │   └── DeweyUnavailable            no answer: refused, closed, timed out. The call may
    │                                   or may not have been applied; retry the batch, after
    │                                   reconciling with what Dewey holds
    └── DeweyRejected                   Dewey answered with a JSON-RPC error (or a tool result
                                        flagged isError): that call's data is refused, so it
                                        goes to ``dewey_dead_letters`` and the rest goes on

Dewey answers every failure of a tool with the same code (-32000, or -32603 from
the MCP layer), whether the data or its own database is at fault, so an
answer cannot be told apart further: an answer is a rejection, silence is an
outage. Dead letters keep what was sent, so a rejection caused by an outage
behind Dewey can be sent again.
"""

from __future__ import annotations

from typing import Any

from consumers.errors import ConsumerError, TransientError


class DeweyUnavailable(TransientError):
    """Dewey did not answer; the message says how the connection failed."""


class DeweyRejected(ConsumerError):
    """Dewey's answer refusing one call, as it came."""

    def __init__(self, code: int | None, message: str, data: Any = None) -> None:
        super().__init__(f"Dewey refused ({code}): {message}")
        self.code = code
        self.message = message
        self.data = data
