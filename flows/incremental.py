"""The scheduled flow: curate only the input files not seen before, against everything curated so far.

    ROOT/incremental.json     files processed (path, size, content hash) and the batches made
    ROOT/batches/00001/       one curate run per scheduled run that found new files
    ROOT/shards/              every batch's shards, one manifest version per batch

Each batch dedups exactly and fuzzily against the previous batch's indexes, which already hold
everything kept before it, so a near copy of a document curated last week is rejected today.
"""
from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow

from flows.curate import curate
from flows.train import train_flow
from pipeline.config import SluiceConfig, load_config
from pipeline.incremental import IncrementalState
from pipeline.readers import expand_inputs
from pipeline.rundir import RunDir, RunLocked
from pipeline.runtime import start_ray
from stages.tokenize import append_shards

log = logging.getLogger("sluice")


def batch_config(cfg: SluiceConfig, batch_dir: Path, previous: Path | None) -> SluiceConfig:
    against = str(previous) if previous else None
    data = cfg.model_dump()
    data["out"] = str(batch_dir)
    data["dedup"]["exact"]["against"] = against
    data["dedup"]["fuzzy"]["against"] = against
    return SluiceConfig.model_validate(data)


@flow(name="sluice-incremental")
def incremental_flow(config_path: str) -> dict:
    """One scheduled run: returns the batch's ledger summary, or {} when no input file is new."""
    cfg = load_config(config_path)
    start_ray(cfg.ray)  # the flow's entry point in a scheduled run's own process
    root = Path(cfg.out)
    try:
        with RunDir(root).lock():
            return _run_batch(cfg, root)
    except RunLocked as err:
        log.warning("incremental: %s; skipping this one", err)
        return {}


def _run_batch(cfg: SluiceConfig, root: Path) -> dict:
    state = IncrementalState.load(root)
    new = state.new_files(expand_inputs(cfg.inputs))
    if not new:
        log.info("incremental: no new input files under %s", root)
        return {}
    batch_dir = state.next_batch_dir()
    log.info("incremental: batch %s with %d new files", batch_dir.name, len(new))
    summary = curate(batch_config(cfg, batch_dir, state.last_batch_dir),
                     only=[f.path for f in new]).model_dump(by_alias=True)
    if cfg.tokenize.enabled and summary["kept"]:
        manifest = append_shards(batch_dir, RunDir(root).shards, cfg)
        summary["manifest_version"] = manifest.version
        if cfg.train.enabled:  # continue the same run from its last checkpoint: `steps` more per version
            more = cfg.train.model_copy(update={"steps": cfg.train.steps * manifest.version})
            summary["train"] = train_flow(cfg.model_copy(update={"train": more}), str(RunDir(root).shards), str(root))
    state.record(batch_dir, new)
    return summary
