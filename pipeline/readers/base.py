"""What every reader shares: the input file and piece, the fail-fast error, the row maker, the batcher.

`Rows` is where the ledger's promise is kept for ingestion: every record a reader meets becomes
an `Outcome`, either a kept document or a rejected row with a reason code and a `file:line`/offset
detail, and every row names its `origin`. `batches` turns a reader's outcomes into bounded tables.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from pipeline.config import InputSpec
from pipeline.ledger import StageResult, rejected_rows
from pipeline.readers.encoding import lossy
from pipeline.schema import DOC_SCHEMA

STAGE = "ingest"


class InputError(ValueError):
    """An input that cannot be read at all; raised on the driver before any Ray work."""


@dataclass(frozen=True)
class InputFile:
    path: str
    format: str
    source: str
    rel: str  # path relative to the input (folder or glob root); part of derived ids
    spec: InputSpec


@dataclass(frozen=True)
class Piece:
    """A part of one input file that one task reads: fixed by the input alone, so output is too.

    `start`/`end` are byte offsets (line formats, WARC/WET) or row groups (Parquet); `end` None
    reads to the end. A piece owns the records that START in [start, end). `before` counts the
    file's records before `start` (lines for line formats, rows for Parquet), so a piece numbers
    its records (ids, origins) as reading the whole file would, without rereading what precedes it.
    """

    index: int  # position in input order over all pieces of all files
    file: InputFile
    start: int = 0
    end: int | None = None
    before: int = 0


def meta_json(fields: dict) -> str:
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return text if is_utf8_safe(text) else json.dumps(fields, sort_keys=True, default=str)


def is_utf8_safe(text: str) -> bool:
    """False for strings holding lone surrogates (JSON `\\ud800` escapes), which Arrow cannot store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def id_value(value) -> str | None:
    """An input's own id as a string; None when absent, so a position-based id is derived instead."""
    if value is None or value == "":
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    return meta_json(value)


TOO_LONG_PREFIX = 65_536  # characters of a too_long record kept in its rejected row
BATCH_TEXT_CHARS = 64 << 20  # a batch also ends at this much text, so a batch of long documents stays bounded


def raw_limit(max_chars: int) -> int:
    """Bytes of one record a reader holds at most: more and the record is `too_long` unread.

    A code point takes at most 12 bytes in any input format (a JSON surrogate-pair escape), so a
    record over this size cannot carry a text within `max_chars` unless its other fields exceed 1 MiB.
    """
    return 12 * max_chars + (1 << 20)


@dataclass(frozen=True)
class Outcome:
    """One record's fate: a document row, kept (`reason` None) or rejected with a reason and detail."""

    doc: dict
    reason: str | None = None
    detail: str | None = None


class Rows:
    """Makes one file's records into kept documents or rejected rows with reasons, origins and ids.

    `separator` joins the file's relative path and a record's position into its `origin`:
    ":" line number, "@" byte offset, "#" row number.
    """

    def __init__(self, f: InputFile, separator: str, max_chars: int):
        self.f = f
        self.separator = separator
        self.max_chars = max_chars
        self.raw_limit = raw_limit(max_chars)

    def derived_id(self, position: int | str) -> str:
        return f"{self.f.source}/{self.f.rel}#{position}"

    def _doc(self, id: str, text: str, position: int | str, url: str | None, meta: dict | None) -> dict:
        return {"id": id, "text": text, "source": self.f.source, "url": url, "meta": meta_json(meta or {}),
                "origin": f"{self.f.rel}{self.separator}{position}"}

    def keep(self, id: str, text: str, position: int, url: str | None = None, meta: dict | None = None) -> Outcome:
        """A document, unless its text is over `max_chars` (then `too_long`, with a prefix of the text)."""
        if len(text) > self.max_chars:
            return self.reject(id, text[:TOO_LONG_PREFIX], "too_long", position,
                               f"{len(text)} chars > max {self.max_chars}", url, meta)
        return Outcome(self._doc(id, text, position, url, meta))

    def reject(self, id: str, raw: bytes | str, reason: str, where: int | str, message: str,
               url: str | None = None, meta: dict | None = None, position: int | str | None = None) -> Outcome:
        """A rejected record; `where` goes into the detail, `position` (default `where`) into the origin."""
        text = raw if isinstance(raw, str) else lossy(raw)
        doc = self._doc(id, text[:1_000_000], where if position is None else position, url, meta)
        return Outcome(doc, reason, f"{self.f.rel}:{where}: {message}")

    def unread(self, id: str, prefix: bytes, length: int, where: int, url: str | None = None,
               meta: dict | None = None) -> Outcome:
        """A record too big to hold (`length` bytes > `raw_limit`), rejected from its first bytes only."""
        return self.reject(id, prefix[:TOO_LONG_PREFIX], "too_long", where,
                           f"record of {length} bytes > {self.raw_limit} read at most for max {self.max_chars} chars",
                           url, meta)


def batches(outcomes: Iterator[Outcome], batch_rows: int) -> Iterator[StageResult]:
    """Outcomes in input order as StageResults of at most `batch_rows` rows (or about BATCH_TEXT_CHARS
    of text); at least one, possibly empty, so a consumer always sees the schema."""
    kept: list[dict] = []
    rejected: list[dict] = []
    reasons: list[str] = []
    details: list[str] = []
    size, emitted = 0, False

    def flush() -> StageResult:
        result = StageResult(kept=pa.Table.from_pylist(kept, schema=DOC_SCHEMA),
                             rejected=rejected_rows(pa.Table.from_pylist(rejected, schema=DOC_SCHEMA),
                                                    STAGE, reasons, details))
        for part in (kept, rejected, reasons, details):
            part.clear()
        return result

    for outcome in outcomes:
        if outcome.reason is None:
            kept.append(outcome.doc)
        else:
            rejected.append(outcome.doc)
            reasons.append(outcome.reason)
            details.append(outcome.detail)
        size += len(outcome.doc["text"])
        if len(kept) + len(rejected) >= batch_rows or size >= BATCH_TEXT_CHARS:
            yield flush()
            size, emitted = 0, True
    if kept or rejected or not emitted:
        yield flush()
