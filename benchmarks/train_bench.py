"""Training throughput of the MoE model per parallel strategy: tokens/s, MFU, expert-load balance, peak
memory, share of step time waiting on data.

Strategies (one row each, same model, data and seed): `replicated` (one rank's whole model; DDP across
ranks), `--fsdp` (FSDP2 per block: bf16 parameters and compute, fp32 reduction and master weights on
CUDA) and `--ep` (expert parallelism over every rank: the all_to_all dispatch, grouped GEMM on the local
experts). `--grad-accum K` takes each step in K micro-batches of `--batch-size`. On one device the
FSDP and EP rows run their real code paths over a group of one (their gathers, permutations and
casts, no network); under `torchrun --nproc-per-node N` they spread over N devices.

CUDA when present (bf16, grouped GEMM, fused AdamW), else CPU (fp32). Batches come from real Sluice
shards through the training loader; the shards hold random token ids (throughput does not depend on
the text), written once into a temporary folder.

    python benchmarks/train_bench.py                                # CPU-sized: tiny, seq 256
    timeout 540 python benchmarks/train_bench.py --preset base --seq-len 2048 --batch-size 8 \
        --grad-accum 2 --steps 12 --fsdp --ep --compile                                 # one H200
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import TrainConfig  # noqa: E402
from pipeline.manifest import ShardManifest, TokenizerInfo, write_manifest  # noqa: E402
from pipeline.shardfile import shard_name, token_dtype, write_shard  # noqa: E402
from stages.train.loop import Trainer, model_config, open_loaders  # noqa: E402
from stages.train.model import count_params, flops_per_token, grouped_mm_supported  # noqa: E402

VOCAB = 32_000


def write_token_shards(out: Path, tokens: int, *, vocab: int = VOCAB, learnable: bool = False, seed: int = 0) -> Path:
    """Documents of 1-4k token ids in real shard files (two: one train, one held out).

    Random ids by default (throughput does not depend on the text); `learnable` makes each document
    an arithmetic progression modulo the vocabulary, so the loss has something to fall towards.
    """
    rng = np.random.default_rng(seed)
    dtype = token_dtype(vocab)
    lengths = rng.integers(1_000, 4_000, size=tokens // 2_500 + 2)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    if learnable:
        starts, strides = rng.integers(0, vocab, len(lengths)), rng.integers(1, 8, len(lengths))
        position = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
        values = ((np.repeat(starts, lengths) + np.repeat(strides, lengths) * position) % vocab).astype(dtype)
    else:
        values = rng.integers(0, vocab, size=int(offsets[-1]), dtype=dtype)
    docs = pa.table({"doc_id": [f"r{i}" for i in range(len(lengths))], "source": ["synthetic"] * len(lengths),
                     "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))})
    cut = len(lengths) * 9 // 10
    entries = [write_shard(out / shard_name(i), part, version=1, dtype=dtype)
               for i, part in enumerate((docs.slice(0, cut), docs.slice(cut)))]
    tokenizer = TokenizerInfo(file="", sha256="", vocab_size=vocab, eod_token=None, eod_id=None, trained=False)
    write_manifest(out, ShardManifest.first(entries, fingerprint="bench", config_hash="bench", tokenizer=tokenizer,
                                            dtype=dtype.name))
    return out


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run(cfg: TrainConfig, shard_dir: Path, device: torch.device, warmup: int, expert_dispatch: bool) -> dict:
    train_data, _, vocab = open_loaders(shard_dir, cfg, rank=dist.get_rank(), world=dist.get_world_size())
    trainer = Trainer(cfg, vocab, device, expert_dispatch=expert_dispatch)
    batches = iter(train_data)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for step in range(cfg.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        wait = time.perf_counter() - t0
        row = trainer.train_step(batch)  # ends in .item(): the step is finished on the device
        row["data_wait_s"] = wait
        if step >= warmup:  # the first steps pay for compilation, autotuning and allocator growth
            rows.append(row)
    step_s = sum(r["step_s"] + r["data_wait_s"] for r in rows)
    mfus = [r["mfu"] for r in rows if r["mfu"] is not None]
    result = {"tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in rows) / step_s,
              "mfu": sum(mfus) / len(mfus) if mfus else None,
              "peak_gib": peak_memory_gib(device),
              "data_wait": sum(r["data_wait_s"] for r in rows) / step_s,
              "load_cv": sum(sum(r["load_cv"]) / len(r["load_cv"]) for r in rows) / len(rows),
              "load_max": max(max(r["load_max_over_mean"]) for r in rows),
              "loss": rows[-1]["loss"]}
    del trainer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def init_process_group(device: torch.device) -> None:
    """torchrun's group when launched by it, else a group of one (FSDP and EP need one to exist)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per device per micro-batch")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the averages")
    parser.add_argument("--fsdp", action="store_true", help="add a row for FSDP2")
    parser.add_argument("--ep", action="store_true", help="add a row for expert parallelism over every rank")
    parser.add_argument("--impl", nargs="+", default=["auto"], choices=["auto", "grouped", "loop"],
                        help="expert implementations to compare (each strategy runs each)")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    init_process_group(device)
    world = dist.get_world_size()
    strategies = {"replicated": {}}
    if args.fsdp:
        strategies["fsdp"] = {"fsdp": True}
    if args.ep:
        strategies["ep"] = {"expert_parallel": world}
    tokens = (args.steps + 1) * args.batch_size * args.grad_accum * world * (args.seq_len + 1) * 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = Path(tmp)
        if dist.get_rank() == 0:
            write_token_shards(shard_dir, tokens)
        dist.barrier()  # torchrun on one node: the folder is shared
        if world > 1:
            shard_dir = Path(broadcast_path(str(shard_dir)))
        for name, extra in strategies.items():
            for impl in args.impl:
                cfg = TrainConfig(preset=args.preset, seq_len=args.seq_len, batch_size=args.batch_size,
                                  grad_accum=args.grad_accum, steps=args.steps, warmup_steps=2, expert_impl=impl,
                                  compile=args.compile, num_workers=world, **extra)
                results.append((name, impl, run(cfg, shard_dir, device, args.warmup, expert_dispatch=name == "ep")))
        dist.barrier()
    if dist.get_rank() == 0:
        print_table(args, cfg, device, world, results)
    dist.destroy_process_group()


def broadcast_path(path: str) -> str:
    """Rank 0's temporary folder, so every rank reads the one set of shards."""
    box = [path]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def print_table(args, cfg: TrainConfig, device: torch.device, world: int, results: list) -> None:
    mcfg = model_config(cfg, VOCAB)
    params = count_params(mcfg)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    auto = "grouped" if grouped_mm_supported(device, compute, mcfg.d_model, mcfg.d_expert) else "loop"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    dtype = "bf16" if device.type == "cuda" else "fp32"
    print(f"\n{world} x {name}, {dtype}; preset {args.preset} ({params['total'] / 1e6:.1f}M total, "
          f"{params['active'] / 1e6:.1f}M active), seq {args.seq_len}, micro-batch {args.batch_size} x "
          f"{args.grad_accum} per device, {args.steps - args.warmup} timed steps{', compiled' if args.compile else ''}\n")
    memory = "peak GiB" if device.type == "cuda" else "peak RSS"
    print(f"{'strategy':<12}{'experts':<16}{'tokens/s':>12}{'TFLOP/s':>9}{'MFU':>8}{memory:>10}{'data wait':>11}"
          f"{'load cv':>9}{'max/mean':>10}")
    for strategy, impl, r in results:
        impl = f"{auto} (auto)" if impl == "auto" else impl
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        tflops = r["tokens_per_s"] / world * flops_per_token(mcfg, args.seq_len) / 1e12
        print(f"{strategy:<12}{impl:<16}{r['tokens_per_s']:>12,.0f}{tflops:>9.3f}{mfu:>8}{r['peak_gib']:>10.2f}"
              f"{100 * r['data_wait']:>10.2f}%{r['load_cv']:>9.3f}{r['load_max']:>10.2f}")


if __name__ == "__main__":
    main()
