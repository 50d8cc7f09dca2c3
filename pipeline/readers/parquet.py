"""Parquet: one document per row; the text column is `text_field`, every other column goes to meta."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.readers.base import InputFile, Rows, id_value, meta_json
from pipeline.readers.encoding import UndecodableError, decode

BATCH_ROWS = 1024


def read(f: InputFile, rows: Rows) -> None:
    index = 0  # row index, 0-based, across row groups
    try:
        for batch in pq.ParquetFile(f.path).iter_batches(batch_size=BATCH_ROWS):
            for record in batch.to_pylist():
                _row(f, rows, index, record)
                index += 1
    except (OSError, pa.ArrowException) as err:
        rows.reject(rows.derived_id(index), b"", "malformed_record", index,
                    f"unreadable from row {index} on: {err}")


def _row(f: InputFile, rows: Rows, index: int, record: dict) -> None:
    spec, derived = f.spec, rows.derived_id(index)
    raw = meta_json(record)
    text = record.pop(spec.text_field, None)
    doc_id = id_value(record.pop(spec.id_field, None) if spec.id_field else None) or derived
    url = record.pop(spec.url_field, None) if spec.url_field else None
    url = None if url is None else str(url)
    meta = dict(record)
    if isinstance(text, bytes):
        try:
            decoded = decode(text)
        except UndecodableError as err:
            rows.reject(doc_id, text, "bad_encoding", index, str(err), url, meta)
            return
        text = decoded.text
        meta.update(decoded.meta)
    if text is None:
        rows.reject(doc_id, raw, "missing_text", index, f"no {spec.text_field!r} value", url, meta)
    elif not isinstance(text, str):
        rows.reject(doc_id, raw, "malformed_record", index,
                    f"column {spec.text_field!r} is {type(text).__name__}, not text", url, meta)
    else:
        rows.keep(doc_id, text, url, meta)
