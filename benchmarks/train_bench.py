"""Training throughput of the MoE model: tokens/s, MFU, peak memory, share of step time waiting on data.

One process, one device: CUDA when present (bf16 autocast, grouped GEMM, fused AdamW), else CPU
(fp32). Batches come from real Sluice shards through the training loader; the shards hold random
token ids (throughput does not depend on the text), written once into a temporary folder.

    python benchmarks/train_bench.py                                # CPU-sized: tiny, seq 256
    python benchmarks/train_bench.py --preset base --seq-len 2048 --batch-size 16 --steps 30   # one H200
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config import TrainConfig  # noqa: E402
from stages.shard import ShardWriter, build_manifest, token_dtype, write_manifest  # noqa: E402
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
    writer = ShardWriter(out, dtype, tokens_per_shard=int(offsets[-1]) * 9 // 10, version=1)
    writer.add(docs)
    entries = writer.close()
    tokenizer = {"file": None, "sha256": None, "vocab_size": vocab, "eod_token": None, "eod_id": None,
                 "trained": False}
    write_manifest(out, build_manifest(entries, version=1, fingerprint="bench", config_hash="bench",
                                       tokenizer=tokenizer, dtype=dtype))
    return out


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def run(cfg: TrainConfig, shard_dir: Path, device: torch.device, warmup: int) -> dict:
    train_data, _, vocab = open_loaders(shard_dir, cfg, rank=0, world=1)
    trainer = Trainer(cfg, vocab, device)
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
    return {"tokens_per_s": sum(r["tokens_per_s"] * r["step_s"] for r in rows) / step_s,
            "mfu": sum(mfus) / len(mfus) if mfus else None,
            "peak_gib": peak_memory_gib(device),
            "data_wait": sum(r["data_wait_s"] for r in rows) / step_s,
            "loss": rows[-1]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the averages")
    parser.add_argument("--impl", nargs="+", default=["auto", "loop"], choices=["auto", "grouped", "loop"],
                        help="expert implementations to compare")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tokens = (args.steps + 1) * args.batch_size * (args.seq_len + 1) * 2
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = write_token_shards(Path(tmp), tokens)
        results = []
        for impl in args.impl:
            cfg = TrainConfig(preset=args.preset, seq_len=args.seq_len, batch_size=args.batch_size,
                              steps=args.steps, warmup_steps=2, expert_impl=impl, compile=args.compile)
            results.append((impl, run(cfg, shard_dir, device, args.warmup)))

    mcfg = model_config(cfg, VOCAB)
    params = count_params(mcfg)
    compute = torch.bfloat16 if device.type == "cuda" else torch.float32
    auto = "grouped" if grouped_mm_supported(device, compute, mcfg.d_model, mcfg.d_expert) else "loop"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    dtype = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"\n{name}, {dtype}; preset {args.preset} ({params['total'] / 1e6:.1f}M total, "
          f"{params['active'] / 1e6:.1f}M active), seq {args.seq_len}, batch {args.batch_size}, "
          f"{args.steps - args.warmup} timed steps{', compiled' if args.compile else ''}\n")
    memory = "peak GiB" if device.type == "cuda" else "peak RSS"
    print(f"{'experts':<16}{'tokens/s':>12}{'TFLOP/s':>9}{'MFU':>8}{memory:>10}{'data wait':>11}{'vs loop':>9}")
    loop = next((r["tokens_per_s"] for i, r in results if i == "loop"), None)
    for impl, r in results:
        impl = f"{auto} (auto)" if impl == "auto" else impl
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        ratio = f"{r['tokens_per_s'] / loop:.2f}x" if loop else ""
        tflops = r["tokens_per_s"] * flops_per_token(mcfg, args.seq_len) / 1e12
        print(f"{impl:<16}{r['tokens_per_s']:>12,.0f}{tflops:>9.3f}{mfu:>8}{r['peak_gib']:>10.2f}{100 * r['data_wait']:>10.2f}%"
              f"{ratio:>9}")


if __name__ == "__main__":
    main()
