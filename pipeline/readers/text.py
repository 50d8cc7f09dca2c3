"""Plain text files: one document per file (a folder of them is expanded by `expand_inputs`)."""
from __future__ import annotations

import sys
from typing import Iterator

from pipeline.readers.base import Outcome, Piece, Rows
from pipeline.readers.encoding import UndecodableError, decode
from pipeline.readers.streams import ByteReader, TruncatedStream, chunks


def read(piece: Piece, rows: Rows) -> Iterator[Outcome]:
    f = piece.file
    doc_id = f"{f.source}/{f.rel}"  # one document per file: the path alone identifies it
    stream = ByteReader(chunks(f.path))
    try:
        raw, length = stream.read(rows.raw_limit + 1, rows.raw_limit + 1)
        length += stream.read(sys.maxsize, 0)[1]  # the rest of a file too big to hold is only measured
    except TruncatedStream as err:
        yield rows.reject(rows.derived_id(f"truncated@{err.offset}"), err.partial, "truncated", err.offset,
                          str(err), position=1)
        return
    if length > rows.raw_limit:
        yield rows.unread(doc_id, raw, length, 1)
        return
    try:
        decoded = decode(raw)
    except UndecodableError as err:
        yield rows.reject(doc_id, raw, "bad_encoding", 0, str(err), position=1)
        return
    yield rows.keep(doc_id, decoded.text, 1, None, decoded.meta)


def count(piece: Piece) -> int:
    """A text file is one record."""
    return 1
