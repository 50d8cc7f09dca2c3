"""JSON Lines (plain, .gz, .zst): one JSON object per line; blank lines are not records."""
from __future__ import annotations

import json
from typing import Iterator

from pipeline.readers.base import InputFile, Outcome, Piece, Rows, id_value, is_utf8_safe
from pipeline.readers.encoding import FileDecoder, UndecodableError
from pipeline.readers.streams import TruncatedStream, count_lines, sample, utf8_chunks, utf8_lines


def take(record: dict, field: str | None):
    """Remove and return a field; a dotted name (`metadata.url`) reads a nested value and leaves it in meta."""
    if not field:
        return None
    if "." not in field:
        return record.pop(field, None)
    value = record
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def read(piece: Piece, rows: Rows) -> Iterator[Outcome]:
    f = piece.file
    numbered, file_meta = utf8_lines(f.path, piece.start, piece.before + 1, rows.raw_limit)
    decode = FileDecoder(lambda: sample(f.path))
    line = None
    try:
        for line in numbered:
            if piece.end is not None and line.offset >= piece.end:
                return
            if line.blank:
                continue
            if line.cut:
                yield rows.unread(rows.derived_id(line.number), line.raw, line.length, line.number)
            else:
                yield _record(f, rows, line.number, line.raw, file_meta, decode)
    except TruncatedStream as err:
        number = line.number + 1 if line else piece.before + 1
        yield rows.reject(rows.derived_id(f"truncated@{err.offset}"), err.partial, "truncated", err.offset, str(err),
                          position=number)


def count(piece: Piece) -> int:
    """Non-blank lines: every one is a record, kept or rejected."""
    parts, _ = utf8_chunks(piece.file.path, piece.start)
    return count_lines(parts, piece.start, piece.end, bytes.strip)


def _record(f: InputFile, rows: Rows, number: int, raw: bytes, file_meta: dict, decode: FileDecoder) -> Outcome:
    spec, derived = f.spec, rows.derived_id(number)
    try:
        decoded = decode(raw)
    except UndecodableError as err:
        return rows.reject(derived, raw, "bad_encoding", number, str(err))
    try:
        record = json.loads(decoded.text)
    except json.JSONDecodeError as err:
        return rows.reject(derived, raw, "malformed_json", number, f"invalid JSON: {err}")
    if not isinstance(record, dict):
        return rows.reject(derived, raw, "malformed_record", number, f"a JSON {type(record).__name__}, not an object")
    text = take(record, spec.text_field)
    doc_id = id_value(take(record, spec.id_field)) or derived
    url = take(record, spec.url_field)
    url = None if url is None else str(url)
    meta = {**record, **file_meta, **decoded.meta}
    if text is None:
        return rows.reject(doc_id, raw, "missing_text", number, f"no {spec.text_field!r} field", url, meta)
    if not isinstance(text, str):
        return rows.reject(doc_id, raw, "malformed_record", number,
                           f"field {spec.text_field!r} is a {type(text).__name__}, not a string", url, meta)
    if not (is_utf8_safe(text) and is_utf8_safe(doc_id) and is_utf8_safe(url or "")):
        return rows.reject(derived, raw, "bad_encoding", number, "lone surrogate escape in a string", None, meta)
    return rows.keep(doc_id, text, number, url, meta)
