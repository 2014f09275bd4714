"""Decoding a copy of a compressed response as it streams by.

The client gets the upstream's bytes untouched; the recorder wants the
text. Each decoder takes chunks in order and returns what it could decode so
far, so an SSE stream compressed with gzip is still reassembled event by
event. Multiple codings (`gzip, br`) are undone last-applied first.
"""

from __future__ import annotations

import zlib
from typing import Protocol

import brotli
import zstandard


class Decoder(Protocol):
    def feed(self, chunk: bytes) -> bytes: ...
    def flush(self) -> bytes: ...


class Unencoded:
    """A body sent without Content-Encoding: its bytes are its content."""

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def flush(self) -> bytes:
        return b""


class Zlib:
    """gzip, or deflate with or without its zlib header (servers send both)."""

    def __init__(self, gzip: bool) -> None:
        self._gzip = gzip
        self._inner = zlib.decompressobj(zlib.MAX_WBITS | 32 if gzip else zlib.MAX_WBITS)
        self._started = False

    def feed(self, chunk: bytes) -> bytes:
        if not self._started and not self._gzip and chunk:
            self._started = True
            if (chunk[0] & 0x0F) != 8:
                self._inner = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._inner.decompress(chunk)

    def flush(self) -> bytes:
        return self._inner.flush()


class Brotli:
    def __init__(self) -> None:
        self._inner = brotli.Decompressor()

    def feed(self, chunk: bytes) -> bytes:
        return self._inner.process(chunk)

    def flush(self) -> bytes:
        return b""


class Zstd:
    def __init__(self) -> None:
        self._inner = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, chunk: bytes) -> bytes:
        return self._inner.decompress(chunk) if chunk else b""

    def flush(self) -> bytes:
        return b""


class Chain:
    def __init__(self, decoders: list[Decoder]) -> None:
        self._decoders = decoders

    def feed(self, chunk: bytes) -> bytes:
        for decoder in self._decoders:
            chunk = decoder.feed(chunk)
        return chunk

    def flush(self) -> bytes:
        out = b""
        for decoder in self._decoders:
            out = (decoder.feed(out) if out else b"") + decoder.flush()
        return out


class UnsupportedEncoding(ValueError):
    """A Content-Encoding we cannot undo; the body is then recorded as sent."""


def _one(coding: str) -> Decoder:
    if coding in ("gzip", "x-gzip"):
        return Zlib(gzip=True)
    if coding == "deflate":
        return Zlib(gzip=False)
    if coding == "br":
        return Brotli()
    if coding == "zstd":
        return Zstd()
    if coding in ("identity", ""):
        return Unencoded()
    raise UnsupportedEncoding(coding)


def decoder_for(content_encoding: str | None) -> Decoder:
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    if not codings:
        return Unencoded()
    return Chain([_one(c) for c in reversed(codings)])


def known_decoder(content_encoding: str | None) -> Decoder | None:
    """`decoder_for`, or None for an encoding we cannot undo, whose body each caller takes as sent in its own way."""
    try:
        return decoder_for(content_encoding)
    except UnsupportedEncoding:
        return None
