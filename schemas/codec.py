"""Avro encoding and decoding of KGB events, in both framings.

Framings (DESIGN.md, "Event contract"):
- single-object (no registry): ``C3 01``, the 8-byte little-endian CRC-64-AVRO
  fingerprint of the writer schema's Parsing Canonical Form, the Avro body;
- Confluent (with ``KGB_SCHEMA_REGISTRY_URL``): ``00``, the 4-byte big-endian
  registry schema id, the Avro body.
A `Decoder` reads both, whichever the producer used.

Records are the plain dicts fastavro takes and returns: enums are their symbol
strings (``kind="REQUEST"``), unions are the bare value or None, bytes are
`bytes`, and every timestamp (``timestamp-micros``) is an ``int`` of
microseconds since the Unix epoch, in and out, never a datetime. That is done by
parsing the schemas without their ``logicalType`` annotations: the bytes are
identical (a long either way) and so are the fingerprints (Parsing Canonical
Form drops those annotations), while the registry still receives the ``.avsc``
as written, annotations included, for tools such as Redpanda Console.

Encoding fills fields left out of a record with their defaults, and rejects a
record carrying a field the schema lacks, so a misspelt field fails loudly
instead of being silently dropped from the capture.

Schemas are the ``<name>.avsc`` files of this package, read once and parsed
once; ``history/<name>.v<N>.avsc`` are frozen copies of every released version
(the current one included), whose events must keep decoding, resolved to the
current schema with defaults filled for fields added since.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib.resources import files
from typing import IO, TYPE_CHECKING, Any, cast, overload

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.errors import (
    BadFraming,
    CorruptBody,
    EncodeError,
    RegistryError,
    SchemaError,
    SchemaNotCached,
    UnknownSchema,
    clip,
)

if TYPE_CHECKING:
    from schemas.registry import Registry

EXCHANGE = "exchange"
MCP = "mcp"

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
_SINGLE_HEADER = len(SINGLE_OBJECT_MAGIC) + 8
_CONFLUENT_HEADER = len(CONFLUENT_MAGIC) + 4
_SCHEMA_NOT_FOUND = 40403

_ENCODE_FAILURES = (ValueError, TypeError, OverflowError, KeyError, AttributeError)


# --- schemas -------------------------------------------------------------------


def _read_avsc(path: Any) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc


@cache
def raw_schema(name: str) -> dict:
    """The current schema ``<name>.avsc`` as written: what is registered in the registry."""
    if not name.isidentifier():
        raise SchemaError(f"schema name must be a file stem like {EXCHANGE!r}, got {name!r}")
    return _read_avsc(files(__package__) / f"{name}.avsc")


@cache
def history(name: str) -> tuple[dict, ...]:
    """Every frozen earlier version of ``name``, oldest first, as written."""
    folder = files(__package__) / "history"
    found = [p for p in folder.iterdir() if p.name.startswith(f"{name}.v") and p.name.endswith(".avsc")]
    return tuple(_read_avsc(p) for p in sorted(found, key=lambda p: _version(p.name)))


def _version(file_name: str) -> int:
    return int(file_name.split(".")[-2].removeprefix("v"))


def without_logical_types(schema: Any) -> Any:
    """The same schema with ``logicalType`` annotations removed, so timestamps stay ints."""
    if isinstance(schema, dict):
        return {k: without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [without_logical_types(v) for v in schema]
    return schema


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def timestamp(micros: int) -> datetime: ...
@overload
def timestamp(micros: None) -> None: ...
def timestamp(micros: int | None) -> datetime | None:
    """An event's int microseconds as an aware datetime, exactly (no float rounding)."""
    return None if micros is None else EPOCH + timedelta(microseconds=micros)


def parse(schema: Any) -> Any:
    """fastavro's parsed form (a dict for a record, a name or a list otherwise), logical types off;
    invalid schemas raise `SchemaError`."""
    try:
        return parse_schema(without_logical_types(schema))
    except Exception as exc:  # fastavro raises several unrelated types for bad schemas
        raise SchemaError(f"invalid Avro schema: {clip(str(exc))}") from exc


@cache
def load_schema(name: str) -> dict:
    """The current schema ``name``, parsed once (timestamps as int microseconds)."""
    return parse(raw_schema(name))


def fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, in the spec's little-endian byte order.

    fastavro returns the little-endian bytes as hex (checked against the spec's
    test vector in tests/schemas/test_codec.py).
    """
    pcf = to_parsing_canonical_form(parse(schema))
    return bytes.fromhex(_fastavro_fingerprint(pcf, "CRC-64-AVRO"))


def single_object_header(schema: Any) -> bytes:
    return SINGLE_OBJECT_MAGIC + fingerprint(schema)


def confluent_header(schema_id: int) -> bytes:
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big")


# --- encoding ------------------------------------------------------------------


class Encoder:
    """Writes records with one schema behind one fixed header; safe to share, cheap per call.

    A top-level field that is null or one record (an event's ``request``, ``response``, ``http``) is
    handed to fastavro in its tuple notation, naming its branch: else fastavro picks the branch by
    validating the whole record against it first, then walks it again to write it, which was a third of
    an event's encoding. The bytes are the same either way (the branch is the record), and a record that
    does not fit is refused all the same, by the writing.
    """

    def __init__(self, schema: dict, header: bytes) -> None:
        self._schema = schema
        self._header = header
        self._record_unions = record_unions(schema)

    @property
    def header(self) -> bytes:
        """The framing in front of every record's body: reframing an encoded record swaps only this."""
        return self._header

    def encode(self, record: dict) -> bytes:
        """The framed message; a record that does not fit raises `EncodeError`."""
        named = {field: (name, value) for field, name in self._record_unions if type(value := record.get(field)) is dict}
        parts = [self._header]
        try:
            schemaless_writer(
                cast(IO[bytes], _Parts(parts)), self._schema, record | named if named else record, strict_allow_default=True
            )
        except _ENCODE_FAILURES as exc:
            raise EncodeError(f"record does not fit {self._schema['name']}: {clip(str(exc))}") from exc
        return b"".join(parts)  # one copy of fastavro's buffer, the header in front (a BytesIO took three of a 500 KB body)


class _Parts:
    """A file for fastavro to write into that keeps what it writes (one buffer), copying nothing: `write` is all
    fastavro calls on it."""

    __slots__ = ("write",)

    def __init__(self, parts: list[bytes]) -> None:
        self.write = parts.append


def record_unions(schema: dict) -> tuple[tuple[str, str], ...]:
    """(field, record name) of each top-level field whose type is null or one record defined there."""
    found = []
    for field in schema.get("fields", ()):
        branches = field["type"]
        if isinstance(branches, list) and len(branches) == 2 and "null" in branches:
            other = branches[1 - branches.index("null")]
            if isinstance(other, dict) and other.get("type") == "record":
                found.append((field["name"], other["name"]))
    return tuple(found)


def single_object_encoder(name: str = EXCHANGE) -> Encoder:
    """The encoder used when no registry is configured."""
    return Encoder(load_schema(name), single_object_header(raw_schema(name)))


async def registry_encoder(registry: Registry, subject: str, name: str = EXCHANGE) -> Encoder:
    """Registers the current schema once under ``subject``, then frames with its id."""
    schema_id = await registry.register(subject, raw_schema(name))
    return Encoder(load_schema(name), confluent_header(schema_id))


# --- decoding ------------------------------------------------------------------


class _Writer:
    """A writer schema ready to read, with the reader to resolve to (None: same schema)."""

    __slots__ = ("reader", "schema")

    def __init__(self, schema: dict, reader: dict | None) -> None:
        self.schema = schema
        self.reader = reader


class Decoder:
    """Reads both framings into records of the current reader schema.

    Single-object messages find their writer schema by fingerprint among the
    schemas given (the current one and its history); Confluent messages by id,
    fetched from the registry once and cached.
    """

    def __init__(self, reader: Any, writers: Iterable[Any], registry: Registry | None) -> None:
        self._reader = parse(reader)
        self._reader_fingerprint = fingerprint(reader)
        self._registry = registry
        self._by_fingerprint = {fingerprint(w): self._writer(w) for w in writers}
        self._by_id: dict[int, _Writer] = {}

    async def decode(self, data: bytes) -> dict:
        """Both framings; fetches an unseen registry id first. Raises `DecodeError`."""
        schema_id = _confluent_id(data)
        if schema_id is not None and schema_id not in self._by_id and self._registry is not None:
            await self._learn(schema_id)
        return self.decode_local(data)

    def decode_local(self, data: bytes) -> dict:
        """The sync path: single-object, or a registry id already seen (else `SchemaNotCached`)."""
        writer, offset = self._writer_for(data)
        return _read_body(data, offset, writer)

    def _writer_for(self, data: bytes) -> tuple[_Writer, int]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self._by_single_object(data), _SINGLE_HEADER
        schema_id = _confluent_id(data)
        if schema_id is not None:
            return self._by_registry_id(schema_id), _CONFLUENT_HEADER
        if data[:1] == CONFLUENT_MAGIC:
            raise BadFraming(f"Confluent header cut short: {len(data)} bytes")
        raise BadFraming(f"unknown magic {data[:2].hex() or '(empty message)'}: neither C3 01 nor 00")

    def _by_single_object(self, data: bytes) -> _Writer:
        if len(data) < _SINGLE_HEADER:
            raise BadFraming(f"single-object header cut short: {len(data)} bytes")
        found = self._by_fingerprint.get(data[2:_SINGLE_HEADER])
        if found is None:
            raise UnknownSchema(
                f"unknown schema fingerprint {data[2:_SINGLE_HEADER].hex()}: "
                "written by a newer producer, or a schema missing from schemas/history/"
            )
        return found

    def _by_registry_id(self, schema_id: int) -> _Writer:
        found = self._by_id.get(schema_id)
        if found is not None:
            return found
        if self._registry is None:
            raise UnknownSchema(f"Confluent-framed message (schema id {schema_id}) but no registry configured")
        raise SchemaNotCached(schema_id)

    async def _learn(self, schema_id: int) -> None:
        """Fetch a writer schema by id; a schema the registry lacks is the message's fault."""
        try:
            raw = await self._registry.schema_by_id(schema_id)  # type: ignore[union-attr]
        except RegistryError as exc:
            if exc.error_code == _SCHEMA_NOT_FOUND:
                raise UnknownSchema(f"registry has no schema id {schema_id}") from exc
            raise
        try:
            known = self._by_fingerprint.get(fingerprint(raw))
            self._by_id[schema_id] = known or self._writer(raw)
        except SchemaError as exc:
            raise UnknownSchema(f"schema id {schema_id}: {exc}") from exc

    def _writer(self, schema: Any) -> _Writer:
        if fingerprint(schema) == self._reader_fingerprint:
            return _Writer(self._reader, None)
        return _Writer(parse(schema), self._reader)


def make_decoder(registry: Registry | None, name: str = EXCHANGE) -> Decoder:
    """The decoder for the current schema ``name``, knowing its frozen history."""
    return Decoder(raw_schema(name), (raw_schema(name), *history(name)), registry)


def _confluent_id(data: bytes) -> int | None:
    if data[:1] == CONFLUENT_MAGIC and len(data) >= _CONFLUENT_HEADER:
        return int.from_bytes(data[1:_CONFLUENT_HEADER], "big")
    return None


def _read_body(data: bytes, offset: int, writer: _Writer) -> dict:
    """Decode one Avro body; any failure on these untrusted bytes is a `DecodeError`."""
    buf = io.BytesIO(data)
    buf.seek(offset)
    try:
        record = schemaless_reader(buf, writer.schema, writer.reader)
    except SchemaResolutionError as exc:
        raise UnknownSchema(f"writer schema does not resolve to the reader: {clip(str(exc))}") from exc
    except EOFError:
        raise CorruptBody(f"Avro body truncated: {len(data) - offset} bytes") from None
    except Exception as exc:  # fastavro signals bad bytes with many unrelated types
        raise CorruptBody(f"invalid Avro body: {type(exc).__name__}: {clip(str(exc))}") from exc
    if buf.tell() != len(data):
        raise CorruptBody(f"{len(data) - buf.tell()} trailing bytes after the Avro body")
    if not isinstance(record, dict):
        raise CorruptBody(f"an event is a record, not {type(record).__name__}")
    return record
