"""Input files to pieces, and one piece to batches of rows: the unit of work of the streaming core.

A file larger than `ingest.piece_bytes` is split so that one big input uses every core: JSON Lines
and TSV at line starts, WARC/WET at record starts (a line beginning `WARC/1.`), Parquet by row
groups. Compressed files (no offset can be sought), UTF-16/32 files (b"\\n" is not a line end) and
CSV (a quoted field may hold newlines, so no offset is known to start a record without parsing
from the top) are one piece each, as is a text file (one document). Pieces depend on the input
files and `max_bytes` alone, and a file reads to the same rows whatever its pieces.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterator

from pipeline.ledger import StageResult
from pipeline.readers import csv, jsonl, parquet, text, warc
from pipeline.readers.base import InputError, InputFile, Outcome, Piece, Rows, batches
from pipeline.readers.encoding import bom_encoding
from pipeline.readers.streams import CHUNK, ByteReader, chunks, is_compressed, read_head

__all__ = ["Piece", "plan_pieces", "read_piece", "count_records"]

LINE_FORMATS = {"jsonl", "tsv"}
ORIGIN_SEPARATORS = {"jsonl": ":", "csv": ":", "tsv": ":", "text": ":", "warc": "@", "wet": "@", "parquet": "#"}
READERS: dict[str, Callable[[Piece, Rows], Iterator[Outcome]]] = {
    "jsonl": jsonl.read, "csv": csv.read, "tsv": csv.read, "text": text.read, "parquet": parquet.read,
}
COUNTERS: dict[str, Callable[[Piece], int]] = {
    "jsonl": jsonl.count, "csv": csv.count, "tsv": csv.count, "text": text.count,
    "warc": warc.count, "wet": warc.count, "parquet": parquet.count,
}


def _line_starts(path: str, size: int, max_bytes: int) -> list[tuple[int, int]]:
    """(start, lines before it) of each piece: the first line start at or after every `max_bytes`
    from the previous piece's start, found and numbered in one sequential pass of `bytes.count`."""
    starts = [(0, 0)]
    target, pos, lines = max_bytes, 0, 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            while target <= pos + len(chunk) and (newline := chunk.find(b"\n", max(0, target - 1 - pos))) >= 0:
                start = pos + newline + 1
                if start >= size:
                    return starts
                starts.append((start, lines + chunk.count(b"\n", 0, newline + 1)))
                target = start + max_bytes
            lines += chunk.count(b"\n")
            pos += len(chunk)
    return starts


def _record_starts(path: str, size: int, max_bytes: int) -> list[int]:
    """The start of each WARC piece: the first `WARC/1.` line at or after every `max_bytes` from the
    previous piece's start (a seek and a short scan each)."""
    starts = [0]
    while starts[-1] + max_bytes < size:
        target = starts[-1] + max_bytes
        stream = ByteReader(chunks(path, target - 1), target - 1)
        stream.line(1)  # the rest of the line holding byte target-1: the next line starts at or after target
        while True:
            at_start = stream.at_line_start
            line = stream.line(len(warc.VERSION))
            if line is None:
                return starts
            if at_start and line.raw.startswith(warc.VERSION):
                starts.append(line.offset)
                break
    return starts


def _file_ranges(f: InputFile, max_bytes: int) -> list[tuple[int, int | None, int]]:
    """(start, end, records before) of each piece of one file."""
    size = Path(f.path).stat().st_size
    if size <= max_bytes:
        return [(0, None, 0)]
    if f.format == "parquet":
        return parquet.plan(f.path, max_bytes)
    if is_compressed(f.path) or bom_encoding(read_head(f.path, 4)):
        return [(0, None, 0)]
    if f.format in LINE_FORMATS:
        starts = _line_starts(f.path, size, max_bytes)
    elif f.format in ("warc", "wet"):
        starts = [(start, 0) for start in _record_starts(f.path, size, max_bytes)]
    else:
        return [(0, None, 0)]
    ends = [start for start, _ in starts[1:]] + [None]
    return [(start, end, before) for (start, before), end in zip(starts, ends)]


def plan_pieces(files: list[InputFile], max_bytes: int) -> list[Piece]:
    """Every file's pieces in input order, indexed 0..n-1. Cheap on the driver: a Parquet footer, a
    seek and a short scan per WARC piece; a split line file is read once sequentially to number its
    lines (so each piece knows the line number it starts at)."""
    pieces: list[Piece] = []
    for f in files:
        for start, end, before in _file_ranges(f, max_bytes):
            pieces.append(Piece(len(pieces), f, start, end, before))
    return pieces


def _outcomes(piece: Piece, html_extractor: str, max_chars: int) -> Iterator[Outcome]:
    f = piece.file
    if f.format not in ORIGIN_SEPARATORS:
        raise InputError(f"no reader for format {f.format!r} of {f.path}")
    rows = Rows(f, ORIGIN_SEPARATORS[f.format], max_chars)
    if f.format in ("warc", "wet"):
        return warc.read(piece, rows, html_extractor)
    return READERS[f.format](piece, rows)


def read_piece(piece: Piece, html_extractor: str = "trafilatura", max_chars: int = sys.maxsize,
               batch_rows: int = 2048) -> Iterator[StageResult]:
    """The piece's records as batches of kept documents and rejected rows (stage `ingest`), in input
    order; a record over `max_chars` is rejected as `too_long`, one too big to hold without being
    read. Memory is bounded by a batch, not by the file."""
    return batches(_outcomes(piece, html_extractor, max_chars), batch_rows)


def count_records(piece: Piece) -> int:
    """Records in the piece, counted apart from parsing (lines, rows, `WARC/1.` lines): what ingest's
    kept plus rejected rows must add up to, so a reader that drops or merges records is caught."""
    return COUNTERS[piece.file.format](piece)
