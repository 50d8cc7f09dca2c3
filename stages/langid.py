"""Language ID: tag every document with `lang` and `lang_score`, reject disallowed or unsure ones.

The fastText model is loaded once per worker process (see `quality.langid`), not once per batch.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import LangIdConfig
from pipeline.ledger import StageResult, rejected_rows
from pipeline.stage import Build, map_stage
from quality.langid import model_path, predict

STAGE = "langid"


def process(batch: pa.Table, cfg: LangIdConfig, stage: str = STAGE) -> StageResult:
    langs, scores = predict(batch["text"].to_pylist(), cfg.model)
    tagged = batch.append_column("lang", pa.array(langs, pa.string())) \
        .append_column("lang_score", pa.array(scores, pa.float64()))
    ok = pc.greater_equal(tagged["lang_score"], cfg.min_score)
    if cfg.allow is not None:
        ok = pc.and_(ok, pc.is_in(tagged["lang"], pa.array(cfg.allow, pa.string())))
    rejected = tagged.filter(pc.invert(ok))
    detail = [f"lang={lang} score={score:.3f}" for lang, score in
              zip(rejected["lang"].to_pylist(), rejected["lang_score"].to_pylist())]
    return StageResult(kept=tagged.filter(ok), rejected=rejected_rows(rejected, stage, "language", detail))


def build(cfg: LangIdConfig, name: str = STAGE) -> Build:
    """Resolve the model path now, so a missing model stops the run before any Ray work."""
    cfg = cfg.model_copy(update={"model": str(model_path(cfg.model))})
    return map_stage(lambda b: process(b, cfg, name), name)
