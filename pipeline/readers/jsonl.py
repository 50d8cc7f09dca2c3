"""JSON Lines (plain, .gz, .zst): one JSON object per line; blank lines are not records."""
from __future__ import annotations

import json

from pipeline.readers.base import InputFile, Rows, id_value, is_utf8_safe
from pipeline.readers.encoding import FileDecoder, UndecodableError
from pipeline.readers.streams import TruncatedStream, sample, utf8_lines


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


def read(f: InputFile, rows: Rows) -> None:
    try:
        numbered, file_meta = utf8_lines(f.path)
        decode = FileDecoder(lambda: sample(f.path))
        for line in numbered:
            if line.raw.strip():
                _record(f, rows, line.number, line.raw, file_meta, decode)
    except TruncatedStream as err:
        rows.reject(rows.derived_id(f"truncated@{err.offset}"), err.partial, "truncated", err.offset, str(err))


def _record(f: InputFile, rows: Rows, number: int, raw: bytes, file_meta: dict, decode: FileDecoder) -> None:
    spec, derived = f.spec, rows.derived_id(number)
    try:
        decoded = decode(raw)
    except UndecodableError as err:
        rows.reject(derived, raw, "bad_encoding", number, str(err))
        return
    try:
        record = json.loads(decoded.text)
    except json.JSONDecodeError as err:
        rows.reject(derived, raw, "malformed_json", number, f"invalid JSON: {err}")
        return
    if not isinstance(record, dict):
        rows.reject(derived, raw, "malformed_record", number, f"a JSON {type(record).__name__}, not an object")
        return
    text = take(record, spec.text_field)
    doc_id = id_value(take(record, spec.id_field)) or derived
    url = take(record, spec.url_field)
    url = None if url is None else str(url)
    meta = {**record, **file_meta, **decoded.meta}
    if text is None:
        rows.reject(doc_id, raw, "missing_text", number, f"no {spec.text_field!r} field", url, meta)
    elif not isinstance(text, str):
        rows.reject(doc_id, raw, "malformed_record", number,
                    f"field {spec.text_field!r} is a {type(text).__name__}, not a string", url, meta)
    elif not (is_utf8_safe(text) and is_utf8_safe(doc_id) and is_utf8_safe(url or "")):
        rows.reject(derived, raw, "bad_encoding", number, "lone surrogate escape in a string", None, meta)
    else:
        rows.keep(doc_id, text, url, meta)
