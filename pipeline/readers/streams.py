"""Byte streams of input files: transparent gzip/zstd by magic bytes, lines with offsets, and truncation.

Python's `gzip` loses the partial tail of a truncated stream and `zstandard`'s stream reader ends a
truncated frame silently, so both are decoded here chunk by chunk with decompressor objects whose
`eof` flag tells a complete member/frame from a cut one. Concatenated members/frames are followed.
"""
from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

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


def chunks(path: str | Path, start: int = 0) -> Iterator[bytes]:
    """Decompressed content of a file, in chunks; raises `TruncatedStream` at a cut or corrupt stream.

    `start` seeks an uncompressed file (a piece of a split file); compressed files are never split.
    """
    with open(path, "rb") as fh:
        fh.seek(start)
        first = fh.read(CHUNK)
        kind = compression(first) if start == 0 else None
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


def is_compressed(path: str | Path) -> bool:
    with open(path, "rb") as fh:
        return compression(fh.read(4)) is not None


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


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    offset: int  # byte offset of the line in the decompressed stream
    raw: bytes  # the line with its ending, cut to the reader's limit
    length: int  # the whole line's length in bytes: more than len(raw) when it was cut
    blank: bool  # the whole line is whitespace

    @property
    def cut(self) -> bool:
        return self.length > len(self.raw)


class ByteReader:
    """Forward reading of decompressed chunks by lines and counted reads, holding at most one chunk
    plus what the caller asks to keep: a 20 MB line costs its kept prefix, not 20 MB.

    A `TruncatedStream` raised by the chunks passes through with `partial` set to the kept part of
    the line or read in progress.
    """

    def __init__(self, parts: Iterator[bytes], offset: int = 0, number: int = 1):
        self._parts = parts
        self._buf = b""
        self._at = 0  # read position in _buf
        self.offset = offset  # stream offset of _buf[_at]
        self.number = number  # number of the next line
        self.at_line_start = True  # the last byte consumed was a newline (or nothing was consumed)

    def _fill(self) -> bool:
        chunk = next(self._parts, None)
        if chunk is None:
            return False
        self._buf, self._at = self._buf[self._at:] + chunk, 0
        return True

    def _take(self, n: int) -> bytes:
        data = self._buf[self._at:self._at + n]
        self._at += len(data)
        self.offset += len(data)
        if data:
            self.at_line_start = data.endswith(b"\n")
        return data

    def line(self, limit: int) -> Line | None:
        """The next line, its bytes kept up to `limit`; None at the end of the stream."""
        start, kept, length, blank = self.offset, _Prefix(limit), 0, True
        while True:
            end = self._buf.find(b"\n", self._at)
            part = self._take((end + 1 if end >= 0 else len(self._buf)) - self._at)
            length += len(part)
            blank = blank and not part.strip()
            kept.add(part)
            if end >= 0:
                break
            if not self._more(kept):
                if not length:
                    return None
                break
        self.number += 1
        return Line(self.number - 1, start, kept.value(), length, blank)

    def _more(self, kept: _Prefix) -> bool:
        """Refill the buffer; a truncated stream's error carries what was kept of the unfinished part."""
        try:
            return self._fill()
        except TruncatedStream as err:
            err.partial = kept.value()
            raise

    def rewind(self, data: bytes) -> None:
        """Put back `data`, the last bytes consumed, which start a line: a reader that went too far
        (a WARC body longer than its record) reads them again."""
        self._buf, self._at = data + self._buf[self._at:], 0
        self.offset -= len(data)
        self.at_line_start = True

    def read(self, n: int, keep: int) -> tuple[bytes, int]:
        """Consume up to `n` bytes; returns the first `keep` of them and how many there were."""
        kept, got = _Prefix(keep), 0
        while got < n:
            if self._at == len(self._buf) and not self._more(kept):
                break
            part = self._take(n - got)
            got += len(part)
            kept.add(part)
        return kept.value(), got


class _Prefix:
    """The first `limit` bytes of what is added, gathered without copying them over and over."""

    def __init__(self, limit: int):
        self.parts: list[bytes] = []
        self.size = 0
        self.limit = limit

    def add(self, data: bytes) -> None:
        if self.size < self.limit:
            part = data[:self.limit - self.size]
            self.parts.append(part)
            self.size += len(part)

    def value(self) -> bytes:
        return b"".join(self.parts)


def utf8_chunks(path: str | Path, start: int = 0) -> tuple[Iterator[bytes], dict]:
    """Chunks of a line-oriented file as UTF-8-or-guess bytes, plus meta for the whole file.

    A UTF-16/32 file (with BOM) cannot be split on b"\\n", so it is transcoded to UTF-8 in memory
    first (such files are rare, small, and never split into pieces); its line numbers stay right,
    byte offsets refer to UTF-8.
    """
    encoding = bom_encoding(read_head(path, 4))
    if encoding is None:
        return chunks(path, start), {}
    text = read_all(path).decode(encoding, errors="replace")
    return iter([text.encode("utf-8")]), {"encoding": encoding, "decoded": "bom"}


def utf8_lines(path: str | Path, start: int = 0, number: int = 1,
               limit: int = sys.maxsize) -> tuple[Iterator[Line], dict]:
    """Lines (see `utf8_chunks`) from byte `start`, numbered from `number`, kept up to `limit` bytes;
    on truncation `partial` holds the incomplete last line."""
    parts, meta = utf8_chunks(path, start)
    reader = ByteReader(parts, start, number)
    return iter(lambda: reader.line(limit), None), meta


def count_lines(parts: Iterator[bytes], start: int, end: int | None, content: Callable[[bytes], bytes]) -> int:
    """Lines starting in [start, end) that hold `content`, by plain splitting: a count independent of
    the readers' line handling, for the ledger to check them. A cut stream counts as one record more
    (the readers reject its partial tail as `truncated`)."""
    count, pos, line_start, has = 0, start, start, False
    try:
        for chunk in parts:
            *complete, rest = chunk.split(b"\n")
            for part in complete:
                if end is not None and line_start >= end:
                    return count
                count += has or bool(content(part))
                has, pos = False, pos + len(part) + 1
                line_start = pos
            has = has or bool(content(rest))
            pos += len(rest)
    except TruncatedStream:
        return count + 1
    return count + (has and (end is None or line_start < end))


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
