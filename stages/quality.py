"""Quality classifier: score every document with a fastText classifier, reject below the threshold.

It runs in the row-local pass, before dedup, so `dedup.keep: quality` can keep the best document of
each duplicate cluster; every kept and rejected row after it carries `quality_score`.
"""
from __future__ import annotations

from functools import partial
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import ClassifierConfig, ConfigError
from pipeline.fingerprint import code_digest, digest
from pipeline.ledger import StageResult, rejected_rows
from pipeline.rundir import file_digest
from pipeline.stage import RowStage
from quality.classifier import model_path, score_table, sidecar

STAGE = "quality"


def process(batch: pa.Table, cfg: ClassifierConfig) -> StageResult:
    """Score and judge; a document outside `cfg.languages` gets a null score and passes unjudged."""
    scored = batch.drop_columns([c for c in ("quality_score",) if c in batch.column_names]) \
        .append_column("quality_score", score_table(batch, cfg))
    low = pc.fill_null(pc.less(scored["quality_score"], cfg.threshold), False)
    rejected = scored.filter(low)
    detail = [f"score={s:.3f} < {cfg.threshold:g}" for s in rejected["quality_score"].to_pylist()]
    return StageResult(kept=scored.filter(pc.invert(low)),
                       rejected=rejected_rows(rejected, STAGE, "low_quality", detail))


def build(cfg: ClassifierConfig) -> RowStage:
    """Resolve the model now (the shipped one by default), so a missing model stops the run before
    any Ray work; its bytes and its calibration's, not its path, go into the fingerprint."""
    try:
        path = model_path(cfg.model)
    except FileNotFoundError as err:
        raise ConfigError(f"quality.classifier.model: {err}") from None
    cfg = cfg.model_copy(update={"model": str(path)})
    calibration = sidecar(path, "calibration")
    reads = {"text"} | ({"lang"} if cfg.languages is not None else set())
    return RowStage(STAGE, partial(process, cfg=cfg),
                    digest(cfg.model_dump(exclude={"model"}), file_digest(path),
                           file_digest(calibration) if calibration.is_file() else None,
                           code_digest(__name__, "quality.classifier")),
                    reads=frozenset(reads), adds=frozenset({"quality_score"}))
