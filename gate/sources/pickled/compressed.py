"""Compressed joblib files (``joblib.dump(..., compress=...)``): the whole stream, pickle and raw
arrays, is one zlib, gzip, bz2, xz or lzma stream. It is inflated into memory with the standard
library's incremental decompressors, never beyond ``limit`` bytes (a few kilobytes can claim any
size), and then read like an uncompressed joblib file. joblib's lz4 needs a package weightgate
does not depend on, and is refused by name.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from pathlib import Path

from gate.sources.pickled.constructors import BadPickle

# joblib/compressor.py's prefixes (zlib's second byte depends on the level).
_ZLIB_HEADS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")
_GZIP, _BZ2, _XZ, _LZMA, _LZ4 = b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00", b"\x04\x22\x4d\x18"


def compression_of(head: bytes) -> str | None:
    """The compressor of a joblib file from its first bytes, or ``None`` for an uncompressed stream."""
    if head[:2] in _ZLIB_HEADS:
        return "zlib"
    for name, prefix in (("gzip", _GZIP), ("bz2", _BZ2), ("xz", _XZ), ("lzma", _LZMA), ("lz4", _LZ4)):
        if head.startswith(prefix):
            return name
    return None


def inflate(path: Path, compression: str, limit: int) -> bytes:
    """The decompressed bytes of ``path``; more than ``limit`` of them is refused before they are made."""
    if compression == "lz4":
        raise BadPickle("an lz4-compressed joblib file: weightgate reads joblib files compressed with zlib, gzip, "
                        "bz2, xz or lzma, or uncompressed")
    decompressor = (zlib.decompressobj(zlib.MAX_WBITS | 32) if compression in ("zlib", "gzip")  # either header
                    else bz2.BZ2Decompressor() if compression == "bz2"
                    else lzma.LZMADecompressor(lzma.FORMAT_ALONE if compression == "lzma" else lzma.FORMAT_XZ))
    try:
        data = decompressor.decompress(path.read_bytes(), limit + 1)  # at most limit + 1 bytes are made
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as err:
        raise BadPickle(f"a corrupt {compression} stream: {err}") from None
    if len(data) > limit:
        raise BadPickle(f"the {compression} stream inflates to more than {limit} bytes (limit)")
    return data
