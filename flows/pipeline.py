"""The whole pipeline as one flow: curate -> tokenize/shard -> train, each a subflow with its artifacts.

Every subflow skips work that finished earlier with the same fingerprint, so `sluice run` after a
kill (or on a schedule) resumes rather than redoes.
"""
from __future__ import annotations

import time

from prefect import flow

from flows.curate import curate
from flows.tokenize import tokenize_flow
from pipeline.config import SluiceConfig
from pipeline.rundir import RunDir
from quality.report import write_report


@flow(name="sluice-pipeline")
def pipeline_flow(cfg: SluiceConfig) -> dict:
    """Returns the curate summary, plus the shard folder and final training metrics when those ran."""
    run = RunDir(cfg.out)
    with run.lock():
        result = {"summary": curate(cfg)}
        if cfg.tokenize.enabled and result["summary"].kept:
            result["shards"] = tokenize_flow(cfg, cfg.out)
            if cfg.train.enabled:
                from flows.train import train_flow  # torch is loaded only by a run that trains: 220 MB

                started = time.perf_counter()
                result["train"] = train_flow(cfg, result["shards"], cfg.out)
                run.add_stage_seconds({"train": time.perf_counter() - started})
            write_report(cfg.out)  # again, now with the shards' token counts
    return result

