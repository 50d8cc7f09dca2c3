"""CSV and TSV with a header row and a named text column (`text_field`; other columns go to meta).

TSV is read without quote handling (IANA TSV has none; SMS-style messages start with quotes).
Lines are decoded as UTF-8 with surrogate escapes so one bad byte never stops the file; a field
that carries such bytes is re-decoded on its own through encoding detection.
"""
from __future__ import annotations

import csv
from typing import Iterator

from pipeline.readers.base import InputFile, Rows, id_value
from pipeline.readers.encoding import FileDecoder, UndecodableError
from pipeline.readers.streams import Line, TruncatedStream, sample, utf8_lines

FIELD_LIMIT = 2**31 - 1  # csv's default 128 KiB would reject long documents; length checks come later


def dialect(fmt: str) -> dict:
    if fmt == "tsv":
        return {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    return {"delimiter": ","}


def header_names(line: str, fmt: str) -> list[str]:
    return next(csv.reader([line], **dialect(fmt)), [])


def _repair(value: str, decode: FileDecoder) -> tuple[str, dict]:
    """A field holding undecodable bytes (as surrogate escapes), decoded again through detection."""
    try:
        value.encode("utf-8")
        return value, {}
    except UnicodeEncodeError:
        decoded = decode(value.encode("utf-8", "surrogateescape"))
        return decoded.text, decoded.meta


def read(f: InputFile, rows: Rows) -> None:
    csv.field_size_limit(FIELD_LIMIT)
    consumed: list[Line] = []  # the physical lines of the record being parsed

    def feed(numbered: Iterator[Line]) -> Iterator[str]:
        for line in numbered:
            consumed.append(line)
            yield line.raw.decode("utf-8-sig", "surrogateescape")

    try:
        numbered, file_meta = utf8_lines(f.path)
        reader = csv.reader(feed(numbered), **dialect(f.format))
        decode = FileDecoder(lambda: sample(f.path))
        header: list[str] | None = None
        while True:
            consumed.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                first = consumed[0].number if consumed else reader.line_num
                rows.reject(rows.derived_id(first), b"".join(l.raw for l in consumed), "malformed_record",
                            first, f"CSV error: {err}")
                continue
            if header is None:
                header = row
            elif row:
                _row(f, rows, header, row, consumed, file_meta, decode)
    except TruncatedStream as err:
        raw = b"".join(l.raw for l in consumed) + err.partial
        rows.reject(rows.derived_id(f"truncated@{err.offset}"), raw, "truncated", err.offset, str(err))


def _row(f: InputFile, rows: Rows, header: list[str], row: list[str], lines: list[Line], file_meta: dict,
         decode: FileDecoder) -> None:
    spec, number = f.spec, lines[0].number
    derived, raw = rows.derived_id(number), b"".join(l.raw for l in lines)
    if len(row) != len(header):
        rows.reject(derived, raw, "malformed_record", number, f"expected {len(header)} fields, got {len(row)}")
        return
    fields, info = {}, dict(file_meta)
    try:
        for name, value in zip(header, row):
            fields[name], field_info = _repair(value, decode)
            info.update(field_info)
    except UndecodableError as err:
        rows.reject(derived, raw, "bad_encoding", number, str(err))
        return
    text = fields.pop(spec.text_field, None)
    doc_id = id_value(fields.pop(spec.id_field, None) if spec.id_field else None) or derived
    url = (fields.pop(spec.url_field, None) if spec.url_field else None) or None
    meta = {**fields, **info}
    if text is None:
        rows.reject(doc_id, raw, "missing_text", number, f"no {spec.text_field!r} column", url, meta)
    else:
        rows.keep(doc_id, text, url, meta)
