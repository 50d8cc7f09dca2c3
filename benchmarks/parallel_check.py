"""Every parallel strategy trains the same model: the per-step losses of the `tiny` MoE, from one seed
on the same data, on CPU:

    single   1 worker, 8 sequences a step
    fsdp2    2 workers x 4, FSDP2 (parameters, gradients and optimizer state sharded per block)
    ep2      2 workers x 4, expert parallel 2 (4 of the 8 routed experts on each, all_to_all dispatch)
    accum2   1 worker, 2 accumulated micro-batches of 4

The two-worker runs go through the whole Ray Train job (gloo, checkpoints, final weights). A one-worker
run has nothing to communicate, so it runs the same `Trainer` and loader in this process, one thread
like a Ray worker, and saves a Ray Train start-up (the dominant cost of these tiny runs).

Each step sees the same 8 sequences in every run (the loader cuts a global batch into per-rank and
per-micro-batch slices). The runs cannot all be bit-equal: a gradient summed over 8 sequences at once
and one averaged from two halves add the same numbers in another order (fp32 rounding, ~1e-7
relative), and the optimizer carries that difference on. `TOLERANCE` bounds the relative loss
difference from `single` at every step.

    python benchmarks/parallel_check.py --json OUT [--steps 10]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.train_bench import write_token_shards  # noqa: E402
from pipeline.config import RayConfig, parse_config  # noqa: E402
from pipeline.rundir import atomic_write_json  # noqa: E402
from pipeline.runtime import start_ray  # noqa: E402
from stages.train.loop import Trainer, open_loaders, read_metrics, train  # noqa: E402

# Measured on this project's 2-core CPU: 1.6e-7 over 10 steps (see the README); the bound
# leaves room for other BLAS builds while staying far below what a wrong gradient scale, a dropped
# token or a missed micro-batch produces (>1e-2 from the first steps on).
TOLERANCE = 1e-4
VOCAB = 512
TRAIN = {"preset": "tiny", "seq_len": 32, "steps": 10, "lr": 3e-3, "warmup_steps": 2, "val_fraction": 0.0,
         "checkpoint_every": 5, "report_every": 5, "max_failures": 1, "cpus_per_worker": 0.5}
RAY = {"num_cpus": 2, "dashboard": False}  # an embedded cluster of this machine's 2 cores
STRATEGIES = {
    "single": {"num_workers": 1, "batch_size": 8},
    "fsdp2": {"num_workers": 2, "batch_size": 4, "fsdp": True},
    "ep2": {"num_workers": 2, "batch_size": 4, "expert_parallel": 2},
    "accum2": {"num_workers": 1, "batch_size": 4, "grad_accum": 2},
}


def write_shards(out: Path) -> Path:
    """Learnable synthetic token shards: enough for a few hundred tiny steps."""
    return write_token_shards(Path(out), 60_000, vocab=VOCAB, learnable=True)


def run_losses(strategy: str, shard_dir: Path, run_dir: Path, **overrides) -> list[float]:
    """Train one strategy (run name = strategy) with Ray Train in `run_dir`; its per-step losses.
    Rerunning with the same run dir resumes from that run's last checkpoint, whatever the strategy
    and worker count of the rerun."""
    train_cfg = TRAIN | STRATEGIES[strategy] | {"run_name": strategy} | overrides
    config = parse_config({"ray": RAY, "train": train_cfg})
    train(config, shard_dir, run_dir)
    return [row["loss"] for row in read_metrics(Path(run_dir) / "train" / "metrics.jsonl")]


def run_in_process(strategy: str, shard_dir: Path, **overrides) -> list[float]:
    """A one-worker strategy without Ray: the job's Trainer and loader, single-threaded."""
    cfg = parse_config({"train": TRAIN | STRATEGIES[strategy] | overrides}).train
    if cfg.num_workers != 1:
        raise ValueError(f"{strategy} needs {cfg.num_workers} workers: run it with run_losses")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker of one CPU: the same BLAS blocking, the same sums
    try:
        train_data, _, vocab = open_loaders(shard_dir, cfg, rank=0, world=1)
        trainer, batches = Trainer(cfg, vocab, torch.device("cpu")), iter(train_data)
        return [trainer.train_step(next(batches))["loss"] for _ in range(cfg.steps)]
    finally:
        torch.set_num_threads(threads)


def max_rel_diff(runs: dict[str, list[float]], reference: str = "single") -> float:
    ref = runs[reference]
    return max(abs(a - b) / abs(b) for name, losses in runs.items() if name != reference
               for a, b in zip(losses, ref, strict=True))


def compare(work_dir: Path, steps: int = 10) -> dict:
    """Run every strategy in its own folder under `work_dir`; the JSON `parallel_check` writes."""
    work_dir = Path(work_dir)
    shard_dir = write_shards(work_dir / "shards")
    runs = {name: run_losses(name, shard_dir, work_dir / name, steps=steps) if spec["num_workers"] > 1
            else run_in_process(name, shard_dir, steps=steps) for name, spec in STRATEGIES.items()}
    return {"runs": runs, "max_rel_diff": max_rel_diff(runs), "tolerance": TOLERANCE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True, help="where to write the losses and max_rel_diff")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import ray

    start_ray(RayConfig(**RAY))  # here, as a flow does: the stages expect Ray up
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = compare(Path(tmp), args.steps)
        finally:
            ray.shutdown()
    atomic_write_json(args.json, result)
    print(f"{'step':>4}" + "".join(f"{name:>12}" for name in result["runs"]))
    for step, losses in enumerate(zip(*result["runs"].values()), 1):
        print(f"{step:>4}" + "".join(f"{loss:>12.6f}" for loss in losses))
    ok = result["max_rel_diff"] <= TOLERANCE
    print(f"max relative difference from single: {result['max_rel_diff']:.2e} "
          f"({'within' if ok else 'OVER'} the tolerance {TOLERANCE:.0e})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
