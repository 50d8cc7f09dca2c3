"""Plain text files: one document per file (a folder of them is expanded by `expand_inputs`)."""
from __future__ import annotations

from pipeline.readers.base import InputFile, Rows
from pipeline.readers.encoding import UndecodableError, decode
from pipeline.readers.streams import TruncatedStream, read_all


def read(f: InputFile, rows: Rows) -> None:
    doc_id = f"{f.source}/{f.rel}"  # one document per file: the path alone identifies it
    try:
        raw = read_all(f.path)
    except TruncatedStream as err:
        rows.reject(rows.derived_id(f"truncated@{err.offset}"), err.partial, "truncated", err.offset, str(err))
        return
    try:
        decoded = decode(raw)
    except UndecodableError as err:
        rows.reject(doc_id, raw, "bad_encoding", 0, str(err))
        return
    rows.keep(doc_id, decoded.text, None, decoded.meta)
