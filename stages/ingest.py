"""Ingest: every input file read into the document schema, one Ray task per file.

Malformed records come back from the readers as rejected rows; documents over `ingest.max_chars`
are rejected here as `too_long`. Nothing read is dropped.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.config import IngestConfig
from pipeline.ledger import StageResult, combine, rejected_rows
from pipeline.readers import InputFile, read_file
from pipeline.rundir import file_digest
from pipeline.stage import Build, StageContext

STAGE = "ingest"


def limit_length(result: StageResult, max_chars: int, stage: str = STAGE) -> StageResult:
    too_long = pc.greater(pc.utf8_length(result.kept["text"]), max_chars)
    long_docs = result.kept.filter(too_long)
    lengths = pc.utf8_length(long_docs["text"]).to_pylist()
    return StageResult(
        kept=result.kept.filter(pc.invert(too_long)),
        rejected=pa.concat_tables([
            result.rejected,
            rejected_rows(long_docs, stage, "too_long", [f"{n} chars > max {max_chars}" for n in lengths]),
        ]),
    )


def ingest_file(f: InputFile, cfg: IngestConfig, stage: str = STAGE) -> StageResult:
    """The pure function: one file's documents, kept or rejected."""
    return limit_length(read_file(f, html_extractor=cfg.html_extractor), cfg.max_chars, stage)


def inputs_fingerprint(files: list[InputFile]) -> str:
    """Path, size and content hash of every input file: a changed byte invalidates finished work."""
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps([f.source, f.rel, f.format, Path(f.path).stat().st_size, file_digest(f.path)]).encode())
    return h.hexdigest()[:16]


def build(files: list[InputFile], cfg: IngestConfig) -> Build:
    def build_ingest(_: ray.data.Dataset | None, ctx: StageContext) -> ray.data.Dataset:
        def ingest(batch: dict) -> pa.Table:
            return combine(ingest_file(files[int(batch["file"][0])], cfg, ctx.name))

        items = ray.data.from_items([{"file": i} for i in range(len(files))],
                                    override_num_blocks=max(1, len(files)))
        return items.map_batches(ingest, batch_size=1, batch_format="numpy")

    return build_ingest
