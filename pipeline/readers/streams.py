"""Byte streams of input files: transparent gzip/zstd by magic bytes, lines with offsets, and truncation.

Python's `gzip` loses the partial tail of a truncated stream and `zstandard`'s stream reader ends a
truncated frame silently, so both are decoded here chunk by chunk with decompressor objects whose
`eof` flag tells a complete member/frame from a cut one. Concatenated members/frames are followed.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zstandard

from pipeline.readers.encoding import bom_encoding

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CHUNK = 1 << 20


class TruncatedStream(Exception):
    """The compressed stream ended (or broke) before its end marker, after `offset` decompressed bytes."""

    def __init__(self, offset: int, partial: bytes, message: str):
        super().__init__(message)
        self.offset = offset
        self.partial = partial  # decompressed bytes after the last complete record, filled in by readers


def compression(head: bytes) -> str | None:
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def _new_decompressor(kind: str):
    return zlib.decompressobj(wbits=31) if kind == "gzip" else zstandard.ZstdDecompressor().decompressobj()


def chunks(path: str | Path) -> Iterator[bytes]:
    """Decompressed content of a file, in chunks; raises `TruncatedStream` at a cut or corrupt stream."""
    with open(path, "rb") as fh:
        first = fh.read(CHUNK)
        kind = compression(first)
        if kind is None:
            data = first
            while data:
                yield data
                data = fh.read(CHUNK)
            return
        produced = 0
        decomp = _new_decompressor(kind)
        pending = first
        started = False  # has the current member/frame received any input?
        while pending:
            try:
                out = decomp.decompress(pending)
            except (zlib.error, zstandard.ZstdError) as err:
                raise TruncatedStream(produced, b"", f"corrupt {kind} stream: {err}") from None
            started = True
            if out:
                produced += len(out)
                yield out
            if decomp.eof:
                pending = decomp.unused_data
                if pending.strip(b"\x00"):  # another member/frame follows (zero padding is not one)
                    decomp, started = _new_decompressor(kind), False
                    continue
                started = False
            pending = fh.read(CHUNK)
            if pending and decomp.eof:
                decomp, started = _new_decompressor(kind), False
        if started and not decomp.eof:
            raise TruncatedStream(produced, b"", f"{kind} stream ends before its end marker")


def read_head(path: str | Path, size: int = 64) -> bytes:
    """The first decompressed bytes of a file, cheaply (one chunk at most)."""
    try:
        for chunk in chunks(path):
            return chunk[:size]
    except TruncatedStream:
        return b""
    return b""


def sample(path: str | Path, size: int = 1 << 20) -> bytes:
    """Up to `size` leading decompressed bytes: enough for a reliable encoding guess."""
    return read_head(path, size)


def read_all(path: str | Path) -> bytes:
    """All decompressed bytes; on truncation the exception's `partial` holds what was read."""
    parts: list[bytes] = []
    try:
        for chunk in chunks(path):
            parts.append(chunk)
    except TruncatedStream as err:
        err.partial = b"".join(parts)
        raise
    return b"".join(parts)


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    offset: int  # byte offset of the line in the decompressed stream
    raw: bytes  # including its line ending


def lines(path: str | Path) -> Iterator[Line]:
    """Lines of a (compressed) file; on truncation `partial` holds the incomplete last line."""
    return _lines(chunks(path))


def _lines(parts: Iterator[bytes]) -> Iterator[Line]:
    number, offset, rest = 0, 0, b""
    try:
        for chunk in parts:
            buf = rest + chunk
            start = 0
            while (end := buf.find(b"\n", start)) >= 0:
                number += 1
                yield Line(number, offset, buf[start:end + 1])
                offset += end + 1 - start
                start = end + 1
            rest = buf[start:]
    except TruncatedStream as err:
        err.partial = rest
        raise
    if rest:
        yield Line(number + 1, offset, rest)


def utf8_lines(path: str | Path) -> tuple[Iterator[Line], dict]:
    """Lines of a line-oriented file, as UTF-8-or-guess bytes, plus meta for the whole file.

    A UTF-16/32 file (with BOM) cannot be split on b"\\n", so it is transcoded to UTF-8 in memory
    first (such files are rare and small); its line numbers stay right, byte offsets refer to UTF-8.
    """
    encoding = bom_encoding(read_head(path, 4))
    if encoding is None:
        return lines(path), {}
    text = read_all(path).decode(encoding, errors="replace")
    data = text.encode("utf-8")
    return _lines(iter([data])), {"encoding": encoding, "decoded": "bom"}
