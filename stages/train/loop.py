"""The MoE training job: a Ray Train (V2) `TorchTrainer` over Sluice token shards.

    train(config, shard_dir, run_dir)      driver: launches the workers, returns the final metrics
      └─ worker_loop(args)                 one per Ray Train worker (a rank)
           └─ Trainer                      Ray-free: model, AdamW, warmup+cosine, one step, eval
                ├─ parallel.parallelize    DDP or FSDP2, expert parallelism
                └─ checkpoint              sharded save/restore (torch distributed checkpoint)

Outputs, under RUN/train/:
    metrics.jsonl      one row per optimizer step (rank 0), rewritten to the resumed step on restart
    ray/<run_name>/    Ray Train's checkpoints; reusing `train.run_name` resumes from the latest
    model.pt           final weights (a plain, whole state dict) and model_config.json
    final.json         the final metrics, also what `train()` returns

One optimizer step takes `grad_accum` micro-batches of `batch_size` sequences on each of `num_workers`
ranks. Resuming is exact: a checkpoint holds model (expert biases included), optimizer, scheduler,
step, the loader position and RNG states, so a run killed and resumed ends with the same parameters
as one that never stopped; being sharded (DCP), it also resumes on another worker count or strategy
as long as the global batch (batch_size x num_workers x grad_accum) is the same.
"""
from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import time
from dataclasses import asdict
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

from pipeline.config import SluiceConfig, TrainConfig
from pipeline.rundir import RunDir, atomic_write_bytes, atomic_write_json
from stages.train import checkpoint, data
from stages.train.data import ShardLoader
from stages.train.model import (ModelConfig, MoETransformer, RoutedExperts, count_params, flops_per_token,
                                load_stats, peak_flops, preset, update_expert_bias)
from stages.train.parallel import check_layout, parallelize, world_size


def model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    return preset(cfg.preset, vocab_size=vocab_size, max_seq_len=cfg.seq_len, score_func=cfg.score_func,
                  balance_bias=cfg.balance, seq_aux_loss_weight=cfg.seq_aux_loss_weight,
                  tie_embeddings=cfg.tie_embeddings, expert_impl=cfg.expert_impl)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then cosine decay to `min_lr_ratio` of it at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; matrices and stacked experts decay, norm gains do not. Fused kernels on CUDA.

    The routed experts have a group of their own: under expert parallelism they are DTensor slices,
    and the multi-tensor kernels take one kind of tensor at a time. Every strategy builds the same
    three groups, so optimizer state moves between strategies in a checkpoint.
    """
    experts = {id(p) for m in model.modules() if isinstance(m, RoutedExperts) for p in m.parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in params if id(p) not in experts]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) in experts], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


class Trainer:
    """One rank's training state and step, independent of Ray so it can be driven directly."""

    def __init__(self, cfg: TrainConfig, vocab_size: int, device: torch.device, *, expert_dispatch: bool = False):
        self.cfg, self.device, self.world = cfg, device, world_size()
        torch.manual_seed(cfg.seed)  # every rank builds the same initial weights, then keeps its part
        self.model_cfg = model_config(cfg, vocab_size)
        check_layout(cfg, self.model_cfg)
        self.model = MoETransformer(self.model_cfg).to(device)
        self.parallel = parallelize(self.model, cfg, device, expert_dispatch=expert_dispatch)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step = 0
        self.resumed_from: list[int] = []  # the steps this run restarted from, across failures
        self.autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
        self.flops_per_token = flops_per_token(self.model_cfg, cfg.seq_len)
        self.peak = peak_flops(device)

    def train_step(self, batch: tuple[Tensor, Tensor]) -> dict:
        """One optimizer step on this rank's (inputs, targets), [batch_size x grad_accum, seq_len] tokens
        taken in `grad_accum` micro-batches; returns the step's metrics.

        Each micro-batch backpropagates its mean loss / grad_accum, so the gradient is that of the mean
        over the whole batch; expert loads simply add up until the one bias update after the step.
        """
        t0 = time.perf_counter()
        inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
        self.model.train()
        accum = self.cfg.grad_accum
        lm_loss = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(zip(inputs.chunk(accum), targets.chunk(accum))):
            with self.parallel.sync_grads(i == accum - 1):  # reduce gradients once, after the last
                with torch.autocast(**self.autocast):
                    out = self.parallel.forward(x, y)
                (out.loss / accum).backward()
            lm_loss += out.lm_loss.detach().float() / accum
        self.parallel.finish_grads()
        grad_norm = self.parallel.clip_grad_norm(self.cfg.grad_clip)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loads = update_expert_bias(self.model, self.cfg.bias_update_rate if self.cfg.balance else 0.0)
        loss = mean_across_ranks(lm_loss)  # .item() syncs: the step is done
        self.step += 1
        dt = time.perf_counter() - t0
        tokens_per_s = inputs.numel() * self.world / dt
        mfu = tokens_per_s / self.world * self.flops_per_token / self.peak if self.peak else None
        return {"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "step_s": dt,
                "tokens_per_s": tokens_per_s, "mfu": mfu, **load_stats(loads)}

    @torch.no_grad()
    def evaluate(self, batches) -> float:
        """Mean cross-entropy over the given batches (in micro-batches), averaged across ranks."""
        self.model.eval()
        losses = []
        for inputs, targets in batches:
            for x, y in zip(inputs.chunk(self.cfg.grad_accum), targets.chunk(self.cfg.grad_accum)):
                with torch.autocast(**self.autocast):
                    losses.append(self.model(x.to(self.device), y.to(self.device)).lm_loss.float())
        self.model.train()
        return mean_across_ranks(torch.stack(losses).mean() if losses else torch.zeros((), device=self.device))


def mean_across_ranks(x: Tensor) -> float:
    if world_size() > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return float(x)


class MetricsLog:
    """metrics.jsonl, one JSON row per step, appended by rank 0.

    On resume the rows after the checkpoint's step are dropped, so the file always describes the
    one history the weights went through.
    """

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        rows = [r for r in read_metrics(path) if r["step"] <= resume_step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def append(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (the loss curve); empty if there is none yet."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------------------------
# The Ray Train job


def worker_loop(args: dict) -> None:
    """One Ray Train worker: build, resume if a checkpoint exists, train, checkpoint, report."""
    import ray.train  # here, not at the top: the Ray-free Trainer should not pay for importing Ray
    import ray.train.torch

    cfg = TrainConfig.model_validate(args["train"])
    shard_dir, out_dir = Path(args["shard_dir"]), Path(args["out_dir"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    train_data, val_data, vocab_size = open_loaders(shard_dir, cfg, rank, world)
    trainer = Trainer(cfg, vocab_size, device)
    saved = ray.train.get_checkpoint()
    if saved is not None:
        with saved.as_directory() as d:
            loader_state = checkpoint.load(Path(d), trainer, rank)
        train_data.load_state_dict(loader_state, on_new_version="next_epoch")  # appended shards
    log = MetricsLog(out_dir / "metrics.jsonl", trainer.step) if rank == 0 else None

    batches = iter(train_data)
    fault_done = out_dir / f".fault-injected-{cfg.run_name}"  # survives the restart: one fault per run
    while trainer.step < cfg.steps:
        if cfg.fault_at_step == trainer.step + 1 and rank == world - 1 and not fault_done.exists():
            fault_done.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # chaos test: a worker dies mid-run
        t0 = time.perf_counter()
        batch = next(batches)
        data_wait = time.perf_counter() - t0
        row = trainer.train_step(batch)
        row["data_wait_s"] = data_wait
        row["time"] = time.time()
        last = trainer.step == cfg.steps
        if val_data is not None and (trainer.step % cfg.eval_every == 0 or last):
            row["val_loss"] = trainer.evaluate(islice(val_data.epoch_batches(), cfg.eval_batches))
        if log is not None:
            log.append(row)
        summary = report_summary(row)
        if trainer.step % cfg.checkpoint_every == 0 or last:
            with tempfile.TemporaryDirectory() as d:
                checkpoint.save(Path(d), trainer, train_data.state_dict(), rank)
                ray.train.report(summary, checkpoint=ray.train.Checkpoint.from_directory(d))
        elif trainer.step % cfg.report_every == 0:
            ray.train.report(summary)
    weights = checkpoint.full_model_state(trainer)  # collective: every rank gives its shards
    if rank == 0:
        write_final(out_dir, trainer, weights)


def report_summary(row: dict) -> dict:
    """What goes to ray.train.report: scalars only (per-layer loads are summarised)."""
    out = {k: v for k, v in row.items() if isinstance(v, (int, float))}
    out["load_cv_mean"] = sum(row["load_cv"]) / max(1, len(row["load_cv"]))
    out["load_max_over_mean_max"] = max(row["load_max_over_mean"], default=1.0)
    return out


def write_final(out_dir: Path, trainer: Trainer, weights: dict) -> None:
    """Final weights (a plain state dict, loadable with weights_only=True) and final metrics."""
    checkpoint.save_torch(weights, out_dir / "model.pt")
    atomic_write_json(out_dir / "model_config.json", asdict(trainer.model_cfg))
    rows = read_metrics(out_dir / "metrics.jsonl")
    steady = rows[min(len(rows) - 1, 2):]  # the first steps pay for warm-up, not training
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    mfus = [r["mfu"] for r in steady if r["mfu"] is not None]
    params = count_params(trainer.model_cfg)
    atomic_write_json(out_dir / "final.json", {
        "steps": trainer.step,
        "resumed_from": trainer.resumed_from,
        "loss_first": rows[0]["loss"],
        "loss": rows[-1]["loss"],
        "val_loss": vals[-1] if vals else None,
        "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
        "mfu": sum(mfus) / len(mfus) if mfus else None,
        "data_wait_share": sum(r["data_wait_s"] for r in steady) / sum(r["data_wait_s"] + r["step_s"] for r in steady),
        "load_cv": rows[-1]["load_cv"],
        "params_total": params["total"],
        "params_active": params["active"],
    })


def train(config: SluiceConfig, shard_dir: Path, run_dir: Path) -> dict:
    """Run (or resume) the training job on `shard_dir`; return the final metrics.

    Outputs go to RUN/train/. Reusing `train.run_name` in the same run dir resumes from the latest
    checkpoint (Ray Train restores a run by name); a finished run is not retrained.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg = config.train
    check_layout(cfg, model_config(cfg, vocab_size=2))  # before any worker starts
    out_dir = RunDir(run_dir).train.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Each ray.train.report waits for the controller's poll (2 s by default); poll faster.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"train": cfg.model_dump(), "shard_dir": str(Path(shard_dir).resolve()),
                           "out_dir": str(out_dir)},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run_name,
            storage_path=str(out_dir / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
        ),
    )
    trainer.fit()
    return json.loads((out_dir / "final.json").read_text())


def open_loaders(shard_dir: Path, cfg: TrainConfig, rank: int, world: int) -> tuple[ShardLoader, ShardLoader | None, int]:
    """This rank's training loader (whole steps: batch_size x grad_accum sequences), its held-out
    loader (None when the held-out tail fills no batch), and the vocabulary size in the manifest."""
    batch = cfg.batch_size * cfg.grad_accum
    train_data, val_data = data.open_loaders(shard_dir, cfg.seq_len, batch, rank=rank, world_size=world,
                                             seed=cfg.seed, val_fraction=cfg.val_fraction)
    vocab_size = train_data.stream.manifest.tokenizer.vocab_size
    return train_data, (val_data if len(val_data) else None), vocab_size
