"""CSV and TSV with a header row and a named text column (`text_field`; other columns go to meta).

TSV is read without quote handling (IANA TSV has none; SMS-style messages start with quotes), so
every line is a record and a big TSV file splits at line starts like JSONL. A CSV file is always one
piece: where a quoted field may hold newlines, no byte offset is known to start a record without
parsing from the top.
Lines are decoded as UTF-8 with surrogate escapes so one bad byte never stops the file; a field
that carries such bytes is re-decoded on its own through encoding detection.
"""
from __future__ import annotations

import csv
from typing import Iterator

from pipeline.readers.base import InputFile, Outcome, Piece, Rows, id_value
from pipeline.readers.encoding import FileDecoder, UndecodableError
from pipeline.readers.streams import Line, TruncatedStream, count_lines, sample, utf8_chunks, utf8_lines

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


def first_line(path: str) -> str | None:
    """The file's first line (its header), decoded; None when the file is empty or cut before one."""
    try:
        for line in utf8_lines(path)[0]:
            return line.raw.decode("utf-8-sig", "replace").rstrip("\r\n")
    except TruncatedStream:
        return None
    return None


def read(piece: Piece, rows: Rows) -> Iterator[Outcome]:
    """Rows of the piece: a TSV piece after the first takes its header from the file's first line."""
    f = piece.file
    csv.field_size_limit(FIELD_LIMIT)
    consumed: list[Line] = []  # the physical lines of the record being parsed

    def feed(numbered: Iterator[Line]) -> Iterator[str]:
        for line in numbered:
            if piece.end is not None and line.offset >= piece.end:
                return
            consumed.append(line)
            yield line.raw.decode("utf-8-sig", "surrogateescape")

    try:
        numbered, file_meta = utf8_lines(f.path, piece.start, piece.before + 1)
        reader = csv.reader(feed(numbered), **dialect(f.format))
        decode = FileDecoder(lambda: sample(f.path))
        header = header_names(first_line(f.path) or "", f.format) if piece.start else None
        while True:
            consumed.clear()
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                first = consumed[0].number if consumed else reader.line_num
                yield rows.reject(rows.derived_id(first), b"".join(l.raw for l in consumed), "malformed_record",
                                  first, f"CSV error: {err}")
                continue
            if header is None:
                header = row
            elif row:
                yield _row(f, rows, header, row, consumed, file_meta, decode)
    except TruncatedStream as err:
        raw = b"".join(l.raw for l in consumed) + err.partial
        number = consumed[0].number if consumed else piece.before + 1
        yield rows.reject(rows.derived_id(f"truncated@{err.offset}"), raw, "truncated", err.offset, str(err),
                          position=number)


def count(piece: Piece) -> int:
    """Records counted apart from `read`: TSV (no quoting) by non-empty lines, CSV by the rows (and
    errors) of a plain `csv.reader` over the file; the header row is not a record."""
    f = piece.file
    if f.format == "tsv":
        parts, _ = utf8_chunks(f.path, piece.start)
        lines = count_lines(parts, piece.start, piece.end, lambda part: part.rstrip(b"\r"))
        return lines - (piece.start == 0 and bool(first_line(f.path)))
    csv.field_size_limit(FIELD_LIMIT)
    numbered, _ = utf8_lines(f.path)
    reader = csv.reader((line.raw.decode("utf-8-sig", "surrogateescape") for line in numbered), **dialect(f.format))
    records, header = 0, False
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return records
            except csv.Error:
                records += 1
                continue
            records += header and bool(row)
            header = True
    except TruncatedStream:
        return records + 1


def _row(f: InputFile, rows: Rows, header: list[str], row: list[str], lines: list[Line], file_meta: dict,
         decode: FileDecoder) -> Outcome:
    spec, number = f.spec, lines[0].number
    derived, raw = rows.derived_id(number), b"".join(l.raw for l in lines)
    if len(row) != len(header):
        return rows.reject(derived, raw, "malformed_record", number,
                           f"expected {len(header)} fields, got {len(row)}")
    fields, info = {}, dict(file_meta)
    try:
        for name, value in zip(header, row):
            fields[name], field_info = _repair(value, decode)
            info.update(field_info)
    except UndecodableError as err:
        return rows.reject(derived, raw, "bad_encoding", number, str(err))
    text = fields.pop(spec.text_field, None)
    doc_id = id_value(fields.pop(spec.id_field, None) if spec.id_field else None) or derived
    url = (fields.pop(spec.url_field, None) if spec.url_field else None) or None
    meta = {**fields, **info}
    if text is None:
        return rows.reject(doc_id, raw, "missing_text", number, f"no {spec.text_field!r} column", url, meta)
    return rows.keep(doc_id, text, number, url, meta)
