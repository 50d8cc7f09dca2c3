"""Heuristic rules: reject by the first failing named rule, or (signals_only) only record each value.

Filter mode adds no columns (C4's line removal rewrites `text`); signals-only mode adds one float64
column per active rule, `signal.<rule name>`, on every batch, so all batches share one schema.
"""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import RulesConfig
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import RowStage
from quality.rules import SIGNAL_PREFIX, active_rules, evaluate

STAGE = "rules"


def applies(batch: pa.Table, cfg: RulesConfig) -> pa.ChunkedArray | pa.Array:
    """Rows the rules judge: Gopher and C4 are calibrated on English, so other languages pass unjudged.
    Without a `lang` column every row is judged (the plan makes sure langid ran when languages are set)."""
    if cfg.languages is None or "lang" not in batch.column_names:
        return pa.array([True] * batch.num_rows)
    return pc.fill_null(pc.is_in(batch["lang"], pa.array(cfg.languages, pa.string())), False)


def process(batch: pa.Table, cfg: RulesConfig) -> StageResult:
    judged = applies(batch, cfg)
    if not cfg.signals_only and pc.all(judged).as_py() is False:  # (null for an empty chunked array)
        inner = process(batch.filter(judged), cfg)
        return StageResult(kept=pa.concat_tables([inner.kept, batch.filter(pc.invert(judged))]),
                           rejected=inner.rejected)
    result = evaluate(batch["text"], cfg)
    if cfg.signals_only:
        for name in result.signals.columns:
            batch = batch.append_column(pa.field(SIGNAL_PREFIX + name, pa.float64()),
                                        result.signals[name].to_arrow().cast(pa.float64()))
        return StageResult(kept=batch, rejected=rejected_rows(batch.slice(0, 0), STAGE, "none"))
    text = result.text.to_arrow().cast(pa.large_string())
    cleaned = batch.set_column(batch.schema.get_field_index("text"), "text", text)
    reasons = result.reason.to_arrow()
    failed = pc.is_valid(reasons)
    return StageResult(  # rejected rows keep their original text, so the report shows what was judged
        kept=cleaned.filter(pc.invert(failed)),
        rejected=rejected_rows(batch.filter(failed), STAGE, reasons.filter(failed),
                               result.detail.to_arrow().filter(failed)),
    )


def build(cfg: RulesConfig) -> RowStage:
    """Check rule names and parameters now, so a typo stops the run before any Ray work."""
    active_rules(cfg)
    reads = {"text"} | ({"lang"} if cfg.languages is not None else set())
    return RowStage(STAGE, partial(process, cfg=cfg), digest(cfg, code_digest(__name__, "quality.rules")),
                    reads=frozenset(reads))
