"""What every reader shares: the input file handle, the fail-fast error, and the row collector.

The collector is where the ledger's promise is kept for ingestion: every record a reader meets is
either `keep`-ed as a document or `reject`-ed with a reason code and a `file:line`/offset detail.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

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


class Rows:
    """Collects one file's kept documents and rejected records, in input order."""

    def __init__(self, f: InputFile):
        self.f = f
        self.kept: list[dict] = []
        self.rejected: list[dict] = []
        self.reasons: list[str] = []
        self.details: list[str] = []

    def derived_id(self, position: int | str) -> str:
        return f"{self.f.source}/{self.f.rel}#{position}"

    def keep(self, id: str, text: str, url: str | None = None, meta: dict | None = None) -> None:
        self.kept.append({"id": id, "text": text, "source": self.f.source, "url": url,
                          "meta": meta_json(meta or {})})

    def reject(self, id: str, raw: bytes | str, reason: str, where: int | str, message: str,
               url: str | None = None, meta: dict | None = None) -> None:
        text = raw if isinstance(raw, str) else lossy(raw)
        self.rejected.append({"id": id, "text": text[:1_000_000], "source": self.f.source, "url": url,
                              "meta": meta_json(meta or {})})
        self.reasons.append(reason)
        self.details.append(f"{self.f.rel}:{where}: {message}")

    def result(self) -> StageResult:
        kept = pa.Table.from_pylist(self.kept, schema=DOC_SCHEMA)
        docs = pa.Table.from_pylist(self.rejected, schema=DOC_SCHEMA)
        return StageResult(kept=kept, rejected=rejected_rows(docs, STAGE, self.reasons, self.details))
