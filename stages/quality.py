"""Quality classifier: score every document with a fastText classifier, reject below the threshold."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ClassifierConfig, ConfigError
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import Build, map_stage
from quality.classifier import score

STAGE = "quality"


def process(batch: pa.Table, cfg: ClassifierConfig, stage: str = STAGE) -> StageResult:
    scores = pa.array(score(batch["text"].to_pylist(), cfg.model, cfg.label), pa.float64())
    scored = batch.append_column("quality_score", scores)
    low = pc.less(scored["quality_score"], cfg.threshold)
    rejected = scored.filter(low)
    detail = [f"score={s:.3f} < {cfg.threshold:g}" for s in rejected["quality_score"].to_pylist()]
    return StageResult(kept=scored.filter(pc.invert(low)),
                       rejected=rejected_rows(rejected, stage, "low_quality", detail))


def build(cfg: ClassifierConfig, name: str = STAGE) -> Build:
    """Check the model path now, so a missing model stops the run before any Ray work."""
    if not cfg.model or not Path(cfg.model).is_file():
        raise ConfigError(f"quality.classifier.model: model file not found: {cfg.model}")
    return map_stage(lambda b: process(b, cfg, name), name)
