"""Language ID: tag every document with `lang` and `lang_score`, reject disallowed or unsure ones.

The fastText model is loaded once per worker process (see `quality.langid`), not once per batch.
"""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import LangIdConfig
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.rundir import file_digest
from pipeline.stage import RowStage
from quality.langid import model_path, predict

STAGE = "langid"


def process(batch: pa.Table, cfg: LangIdConfig) -> StageResult:
    langs, scores = predict(batch["text"].to_pylist(), cfg.model)
    tagged = batch.drop_columns([c for c in ("lang", "lang_score") if c in batch.column_names]) \
        .append_column("lang", pa.array(langs, pa.string())) \
        .append_column("lang_score", pa.array(scores, pa.float64()))
    ok = pc.greater_equal(tagged["lang_score"], cfg.min_score)
    if cfg.allow is not None:
        ok = pc.and_(ok, pc.is_in(tagged["lang"], pa.array(cfg.allow, pa.string())))
    rejected = tagged.filter(pc.invert(ok))
    detail = [f"lang={lang} score={score:.3f}" for lang, score in
              zip(rejected["lang"].to_pylist(), rejected["lang_score"].to_pylist())]
    return StageResult(kept=tagged.filter(ok), rejected=rejected_rows(rejected, STAGE, "language", detail))


def build(cfg: LangIdConfig) -> RowStage:
    """Resolve the model now, so a missing model stops the run before any Ray work; its bytes,
    not its path, go into the fingerprint."""
    path = model_path(cfg.model)
    cfg = cfg.model_copy(update={"model": str(path)})
    return RowStage(STAGE, partial(process, cfg=cfg),
                    digest(cfg.model_dump(exclude={"model"}), file_digest(path), code_digest(__name__, "quality.langid")),
                    adds=frozenset({"lang", "lang_score"}))
