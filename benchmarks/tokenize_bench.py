"""Tokenize + shard throughput against raw `Tokenizer.encode_batch`, and loader throughput against numpy memmap.

Same text, same machine, one run. The Ray cluster is started and warmed before timing, as a
long-lived cluster would be. Ratios above 1 mean Sluice is faster.

    .venv/bin/python benchmarks/tokenize_bench.py              # ~4 MB of real text
    .venv/bin/python benchmarks/tokenize_bench.py --repeat 8   # bigger
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from pipeline.config import SluiceConfig  # noqa: E402
from pipeline.schema import DOC_SCHEMA  # noqa: E402


def corpus(repeat: int) -> list[str]:
    """Wikipedia articles, Shakespeare scenes and inaugural addresses, `repeat` times."""
    texts = []
    for rel, sep in [("wikitext-2/test.txt", "\n = "), ("wikitext-2/valid.txt", "\n = "),
                     ("tinyshakespeare/input.txt", "\n\n")]:
        texts += [t for t in (SHARED / rel).read_text(encoding="utf-8").split(sep) if t.strip()]
    inaugural = sorted((SHARED / "nltk-corpora/inaugural").glob("*.txt"))
    texts += [p.read_text(encoding="utf-8", errors="replace") for p in inaugural]
    return texts * repeat


def write_run(root: Path, texts: list[str], parts: int = 8) -> Path:
    rows = [{"id": f"d{i:08d}", "text": t, "source": "bench", "url": None, "meta": None} for i, t in enumerate(texts)]
    (root / "kept").mkdir(parents=True)
    for p in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[p::parts], schema=DOC_SCHEMA), root / "kept" / f"part-{p:05d}.parquet")
    return root


def timed(fn, trials: int = 1, before=lambda: None):
    """The result and the best wall time of `trials` runs: the least disturbed by other load."""
    best = float("inf")
    for _ in range(trials):
        before()
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def bench_tokenize(args, tmp: Path) -> Path:
    from tokenizers import Tokenizer

    from pipeline.runtime import start_ray
    from stages.shard import read_manifest
    from stages.tokenize import tokenize_run

    texts = corpus(args.repeat)
    run = write_run(tmp / "run", texts)
    cfg = SluiceConfig.model_validate({"ray": {"dashboard": False}, "shard": {"tokens_per_shard": 5_000_000}})
    start_ray(cfg.ray)
    tokenize_run(write_run(tmp / "warmup", texts[:200]), cfg, tokenizer=args.tokenizer)  # start Ray's workers

    tok = Tokenizer.from_file(args.tokenizer)
    n_raw, raw_s = timed(lambda: sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)),
                         args.trials)
    _, fast_s = timed(lambda: tok.encode_batch_fast(texts, add_special_tokens=False), args.trials)
    shards, sluice_s = timed(lambda: tokenize_run(run, cfg, tokenizer=args.tokenizer), args.trials,
                             before=lambda: shutil.rmtree(run / "shards", ignore_errors=True))
    n_sluice = read_manifest(shards)["tokens"] - len(texts)  # without the EOD tokens Sluice adds

    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"\ntokenize: {len(texts):,} docs, {mb:.1f} MB, {n_raw:,} tokens, {os.cpu_count()} CPUs, "
          f"best of {args.trials}")
    print(f"{'path':<44}{'seconds':>9}{'Mtok/s':>9}")
    for name, s, n in [("raw Tokenizer.encode_batch", raw_s, n_raw), ("raw Tokenizer.encode_batch_fast", fast_s, n_raw),
                       ("Sluice tokenize + shard (Ray Data, to disk)", sluice_s, n_sluice)]:
        print(f"{name:<44}{s:>9.2f}{n / s / 1e6:>9.2f}")
    print(f"ratio Sluice / raw encode_batch: {raw_s / sluice_s:.2f}x  (target >= 0.8x)")
    return shards


def bench_loader(args, shards: Path, tmp: Path) -> None:
    from stages.train.data import ShardLoader, TokenStream

    stream = TokenStream(shards)
    loader = ShardLoader(stream, args.seq_len, args.batch_size, seed=0)
    steps, bpe, batch = args.steps, len(loader), args.batch_size
    flat = tmp / "tokens.bin"
    np.concatenate(stream.pieces).tofile(flat)
    mm = np.memmap(flat, dtype=stream.pieces[0].dtype, mode="r")

    tokens = mm.view(np.ndarray)  # a plain ndarray over the mapping: no memmap subclass cost per slice

    def numpy_loop():
        for step in range(steps):
            if step % bpe == 0:
                order = loader.order(step // bpe)
            starts = order[(step % bpe) * batch:(step % bpe + 1) * batch] * args.seq_len
            w = np.empty((len(starts), args.seq_len + 1), np.int64)
            for row, s in enumerate(starts):
                w[row] = tokens[s:s + args.seq_len + 1]
            torch.from_numpy(np.ascontiguousarray(w[:, :-1])), torch.from_numpy(np.ascontiguousarray(w[:, 1:]))

    def sluice_loop():
        it = iter(loader)
        for _ in range(steps):
            next(it)

    numpy_loop(), sluice_loop()  # page the files in for both
    _, np_s = timed(numpy_loop, args.trials)
    _, sl_s = timed(sluice_loop, args.trials)
    samples = steps * batch
    print(f"\nloader: {steps} batches of {args.batch_size} x {args.seq_len} over {stream.total:,} tokens")
    print(f"{'path':<44}{'samples/s':>12}")
    print(f"{'tight numpy memmap loop':<44}{samples / np_s:>12,.0f}")
    print(f"{'Sluice ShardLoader (torch int64 x, y)':<44}{samples / sl_s:>12,.0f}")
    print(f"ratio Sluice / numpy memmap: {np_s / sl_s:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=str(SHARED / "tokenizers/dolma_gpt-neo-test-tokenizer.json"))
    p.add_argument("--repeat", type=int, default=1, help="copies of the real corpus")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--trials", type=int, default=3, help="runs of each path; the best time counts")
    args = p.parse_args()
    os.environ.setdefault("SLUICE_PROGRESS", "0")
    with tempfile.TemporaryDirectory(prefix="sluice-tokbench-") as tmp:
        shards = bench_tokenize(args, Path(tmp))
        bench_loader(args, shards, Path(tmp))


if __name__ == "__main__":
    main()
