"""Parquet: one document per row; the text column is `text_field`, every other column goes to meta.

A big file splits by row groups; a piece's rows are numbered from the rows of the groups before it.
A text value over `max_chars` is cut in Arrow before it becomes a Python string.
"""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.readers.base import TOO_LONG_PREFIX, InputFile, Outcome, Piece, Rows, id_value, meta_json
from pipeline.readers.encoding import UndecodableError, decode

BATCH_ROWS = 1024


def plan(path: str, max_bytes: int) -> list[tuple[int, int, int]]:
    """(first row group, end row group, rows before) per piece: consecutive groups up to `max_bytes`
    compressed (a bigger group is a piece of its own)."""
    meta = pq.ParquetFile(path).metadata
    ranges: list[tuple[int, int, int]] = []
    start, size, rows, before = 0, 0, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        group_bytes = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
        if g > start and size + group_bytes > max_bytes:
            ranges.append((start, g, before))
            start, size, before = g, 0, before + rows
            rows = 0
        size += group_bytes
        rows += group.num_rows
    ranges.append((start, meta.num_row_groups, before))
    return ranges


def _groups(piece: Piece, file: pq.ParquetFile) -> list[int]:
    end = file.metadata.num_row_groups if piece.end is None else piece.end
    return list(range(piece.start, end))


def count(piece: Piece) -> int:
    """Rows of the piece's row groups, from the footer alone."""
    file = pq.ParquetFile(piece.file.path)
    return sum(file.metadata.row_group(g).num_rows for g in _groups(piece, file))


def read(piece: Piece, rows: Rows) -> Iterator[Outcome]:
    f, index = piece.file, piece.before  # row index, 0-based, across the file's row groups
    try:
        file = pq.ParquetFile(f.path)
        groups = _groups(piece, file)
        for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
            batch, lengths = _cut_long_texts(batch, f.spec.text_field, rows.max_chars)
            for record, length in zip(batch.to_pylist(), lengths):
                yield _row(f, rows, index, record, length)
                index += 1
    except (OSError, pa.ArrowException) as err:
        # every row the footer promised but the file did not give is rejected on its own
        end = piece.before + count(piece)
        for row in range(index, end):
            yield rows.reject(rows.derived_id(row), b"", "malformed_record", row,
                              f"unreadable from row {index} on: {err}")


def _cut_long_texts(batch: pa.RecordBatch, field: str, max_chars: int) -> tuple[pa.RecordBatch, list[int | None]]:
    """The batch with texts over `max_chars` cut to a prefix, and the original length of each cut text."""
    names = batch.schema.names
    if field not in names or not (pa.types.is_string(batch.schema.field(field).type)
                                  or pa.types.is_large_string(batch.schema.field(field).type)):
        return batch, [None] * batch.num_rows
    texts = batch.column(field)
    lengths = pc.utf8_length(texts)
    long = pc.fill_null(pc.greater(lengths, max_chars), False)
    if not pc.any(long).as_py():
        return batch, [None] * batch.num_rows
    cut = pc.if_else(long, pc.utf8_slice_codeunits(texts, 0, TOO_LONG_PREFIX), texts)
    batch = batch.set_column(names.index(field), field, cut)
    return batch, [n if is_long else None for n, is_long in zip(lengths.to_pylist(), long.to_pylist())]


def _row(f: InputFile, rows: Rows, index: int, record: dict, cut_length: int | None) -> Outcome:
    spec, derived = f.spec, rows.derived_id(index)
    raw = meta_json(record)
    text = record.pop(spec.text_field, None)
    doc_id = id_value(record.pop(spec.id_field, None) if spec.id_field else None) or derived
    url = record.pop(spec.url_field, None) if spec.url_field else None
    url = None if url is None else str(url)
    meta = dict(record)
    if cut_length is not None:
        return rows.reject(doc_id, text, "too_long", index, f"{cut_length} chars > max {rows.max_chars}", url, meta)
    if isinstance(text, bytes):
        try:
            decoded = decode(text)
        except UndecodableError as err:
            return rows.reject(doc_id, text, "bad_encoding", index, str(err), url, meta)
        text = decoded.text
        meta.update(decoded.meta)
    if text is None:
        return rows.reject(doc_id, raw, "missing_text", index, f"no {spec.text_field!r} value", url, meta)
    if not isinstance(text, str):
        return rows.reject(doc_id, raw, "malformed_record", index,
                           f"column {spec.text_field!r} is {type(text).__name__}, not text", url, meta)
    return rows.keep(doc_id, text, index, url, meta)
