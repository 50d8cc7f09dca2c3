"""Clean: Unicode normalisation, control characters, whitespace runs; empty after cleaning is rejected.

All of it is vectorised with Arrow compute kernels over the whole batch.
"""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import CleanConfig
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import RowStage

STAGE = "clean"
# C0/C1 controls except tab and newline, plus zero-width and BOM characters.
CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\x{200b}\x{200c}\x{200d}\x{2060}\x{feff}]"


def clean_text(text: pa.Array | pa.ChunkedArray, cfg: CleanConfig) -> pa.ChunkedArray | pa.Array:
    text = pc.fill_null(text, "")
    text = pc.utf8_normalize(text, cfg.unicode_form)
    if cfg.strip_control:
        text = pc.replace_substring_regex(text, "\r\n?", "\n")
        text = pc.replace_substring_regex(text, CONTROL, "")
    if cfg.collapse_whitespace:
        text = pc.replace_substring_regex(text, r"[^\S\n]+", " ")  # runs of spaces/tabs -> one space
        text = pc.replace_substring_regex(text, r" ?\n ?", "\n")  # no spaces around line breaks
        text = pc.replace_substring_regex(text, r"\n{3,}", "\n\n")  # at most one blank line
    return pc.utf8_trim_whitespace(text)


def process(batch: pa.Table, cfg: CleanConfig) -> StageResult:
    text = clean_text(batch["text"], cfg)
    batch = batch.set_column(batch.schema.get_field_index("text"), "text", text.cast(pa.large_string()))
    empty = pc.equal(pc.utf8_length(batch["text"]), 0)
    return StageResult(
        kept=batch.filter(pc.invert(empty)),
        rejected=rejected_rows(batch.filter(empty), STAGE, "empty", "no text left after cleaning"),
    )


def build(cfg: CleanConfig) -> RowStage:
    return RowStage(STAGE, partial(process, cfg=cfg), digest(cfg, code_digest(__name__)))
