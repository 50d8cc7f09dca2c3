"""The `train` flow: launch the Ray Train MoE job on a shard folder and publish its metrics."""
from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from pipeline.config import SluiceConfig
from pipeline.runtime import start_ray
from stages.train.loop import read_metrics, train


@flow(name="train")
def train_flow(cfg: SluiceConfig, shard_dir: str, run_dir: str) -> dict:
    start_ray(cfg.ray)  # a no-op under the CLI, which started Ray already; needed as a flow entry point
    final = train(cfg, Path(shard_dir), Path(run_dir))
    rows = [m for m in read_metrics(Path(run_dir) / "train" / "metrics.jsonl") if "loss" in m]
    create_table_artifact([{"step": m["step"], "loss": round(m["loss"], 4), "lr": m.get("lr")} for m in rows],
                          key="train-loss-curve", description="Training loss by step")
    create_markdown_artifact("| metric | value |\n|---|---|\n" + "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in final.items()),
        key="train-final", description=f"Final metrics of {run_dir}/train")
    return final
