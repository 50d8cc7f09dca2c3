"""The `tokenize` flow: a curated run's kept documents into memory-mappable shards with a manifest."""
from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from pipeline.config import SluiceConfig
from pipeline.manifest import MANIFEST, read_manifest
from pipeline.rundir import RunDir
from stages.tokenize import tokenize_run


@flow(name="tokenize")
def tokenize_flow(cfg: SluiceConfig, run_dir: str, tokenizer: str | None = None) -> str:
    seconds: dict[str, float] = {}
    shard_dir = tokenize_run(Path(run_dir), cfg, tokenizer, seconds=seconds)
    RunDir(run_dir).add_stage_seconds(seconds)
    m = read_manifest(shard_dir)
    rows = "\n".join(f"| {s.file} | {s.tokens:,} | {s.docs:,} |" for s in m.shards)
    create_markdown_artifact(
        f"| shard | tokens | documents |\n|---|---:|---:|\n{rows}\n\nManifest: `{shard_dir / MANIFEST}`",
        key="shards", description=f"Shards of {run_dir}")
    return str(shard_dir)
