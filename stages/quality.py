"""Quality classifier: score every document with a fastText classifier, reject below the threshold.

It runs in the row-local pass, before dedup, so `dedup.keep: quality` can keep the best document of
each duplicate cluster; every kept and rejected row after it carries `quality_score`.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ClassifierConfig, ConfigError
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.rundir import file_digest
from pipeline.stage import RowStage
from quality.classifier import score

STAGE = "quality"


def process(batch: pa.Table, cfg: ClassifierConfig) -> StageResult:
    scores = pa.array(score(batch["text"].to_pylist(), cfg.model, cfg.label), pa.float64())
    scored = batch.drop_columns([c for c in ("quality_score",) if c in batch.column_names]) \
        .append_column("quality_score", scores)
    low = pc.less(scored["quality_score"], cfg.threshold)
    rejected = scored.filter(low)
    detail = [f"score={s:.3f} < {cfg.threshold:g}" for s in rejected["quality_score"].to_pylist()]
    return StageResult(kept=scored.filter(pc.invert(low)),
                       rejected=rejected_rows(rejected, STAGE, "low_quality", detail))


def build(cfg: ClassifierConfig) -> RowStage:
    """Check the model now, so a missing model stops the run before any Ray work."""
    if not cfg.model or not Path(cfg.model).is_file():
        raise ConfigError(f"quality.classifier.model: model file not found: {cfg.model}")
    return RowStage(STAGE, partial(process, cfg=cfg),
                    digest(cfg.model_dump(exclude={"model"}), file_digest(cfg.model),
                           code_digest(__name__, "quality.classifier")),
                    adds=frozenset({"quality_score"}))
