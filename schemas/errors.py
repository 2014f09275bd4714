"""Errors of the event codec and the schema registry client.

    SchemaError                 base; also a schema file that is missing or invalid
    ├── EncodeError             the record does not fit the schema (a producer bug)
    ├── DecodeError             these bytes will never decode: dead-letter them, go on
    │   ├── BadFraming          neither framing, or the header is cut short
    │   ├── UnknownSchema       writer schema unknown (newer producer, id the registry
    │   │                       lacks) or not resolvable to the current reader schema
    │   └── CorruptBody         Avro body truncated, with trailing bytes, or invalid
    ├── SchemaNotCached         `Decoder.decode_local` met a registry id it has not
    │                           fetched yet: `await Decoder.decode` instead
    └── RegistryError           the registry refused or could not be reached

`SchemaNotCached` and `RegistryError` are deliberately not `DecodeError`s: the
bytes may be fine, so a consumer must not dead-letter them; it retries when
`RegistryError.retriable` says so, and otherwise stops loudly.
"""

from __future__ import annotations

_MAX_DETAIL = 500


def clip(text: str) -> str:
    """Keep messages readable: fastavro quotes the datum, which can be a 1 MB body."""
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


class SchemaError(Exception):
    """Base of every error raised by the `schemas` package."""


class EncodeError(SchemaError):
    """The record does not fit the schema; retrying cannot help."""


class DecodeError(SchemaError):
    """The message cannot be decoded; the reason is the message."""


class BadFraming(DecodeError):
    """Neither single-object (C3 01) nor Confluent (00) framing, or a short header."""


class UnknownSchema(DecodeError):
    """The writer schema is not known here, or cannot be resolved to the reader."""


class CorruptBody(DecodeError):
    """The framing is fine but the Avro body is truncated or invalid."""


class SchemaNotCached(SchemaError):
    """The sync fast path needs a registry lookup first."""

    def __init__(self, schema_id: int) -> None:
        super().__init__(f"schema id {schema_id} is not cached yet; await Decoder.decode()")
        self.schema_id = schema_id


class RegistryError(SchemaError):
    """The schema registry answered with an error, or could not be reached.

    `status` is the HTTP status (None when no answer came) and `error_code` the
    registry's own code (e.g. 40403 schema not found, 42201 invalid schema).
    """

    def __init__(self, message: str, status: int | None = None, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code

    @property
    def retriable(self) -> bool:
        """No answer, overload or a server fault may pass; a refusal will not."""
        return self.status is None or self.status == 429 or self.status >= 500
