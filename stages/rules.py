"""Heuristic rules: reject by the first failing named rule, or (signals_only) only record each value.

Filter mode adds no columns (C4's line removal rewrites `text`); signals-only mode adds one float64
column per active rule, `signal.<rule name>`, on every batch, so all batches share one schema.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import RulesConfig
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import Build, map_stage
from quality.rules import SIGNAL_PREFIX, active_rules, evaluate

STAGE = "rules"


def process(batch: pa.Table, cfg: RulesConfig, stage: str = STAGE) -> StageResult:
    result = evaluate(batch["text"], cfg)
    if cfg.signals_only:
        for name in result.signals.columns:
            batch = batch.append_column(pa.field(SIGNAL_PREFIX + name, pa.float64()),
                                        result.signals[name].to_arrow().cast(pa.float64()))
        return StageResult(kept=batch, rejected=rejected_rows(batch.slice(0, 0), stage, "none"))
    text = result.text.to_arrow().cast(pa.large_string())
    cleaned = batch.set_column(batch.schema.get_field_index("text"), "text", text)
    reasons = result.reason.to_arrow()
    failed = pc.is_valid(reasons)
    return StageResult(  # rejected rows keep their original text, so the report shows what was judged
        kept=cleaned.filter(pc.invert(failed)),
        rejected=rejected_rows(batch.filter(failed), stage, reasons.filter(failed),
                               result.detail.to_arrow().filter(failed)),
    )


def build(cfg: RulesConfig, name: str = STAGE) -> Build:
    """Check rule names and parameters now, so a typo stops the run before any Ray work."""
    active_rules(cfg)
    return map_stage(lambda b: process(b, cfg, name), name)
