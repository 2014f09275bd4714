import gzip
import zlib

import brotli
import pytest
import zstandard

from proxy.decode import UnsupportedEncoding, decoder_for

TEXT = b"event: ping\ndata: {}\n\n" * 500


def chunked(data: bytes, size: int = 7) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("deflate", lambda d: zlib.compress(d)[2:-4]),
        ("br", brotli.compress),
        ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
        ("identity", lambda d: d),
        ("gzip, br", lambda d: brotli.compress(gzip.compress(d))),
    ],
)
def test_decodes_in_small_chunks(coding: str, encode) -> None:
    decoder = decoder_for(coding)
    out = b"".join(decoder.feed(c) for c in chunked(encode(TEXT))) + decoder.flush()
    assert out == TEXT


def test_unknown_coding_is_refused() -> None:
    with pytest.raises(UnsupportedEncoding):
        decoder_for("compress")
