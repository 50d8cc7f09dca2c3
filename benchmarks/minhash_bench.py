"""Text-to-signature throughput: Sluice against datasketch's three ways of building MinHashes.

Same documents, same machine, one run, one core (polars and torch pinned to one thread). Every
path starts from raw text: datasketch gets the same normalisation and word 5-gram shingles, made in
Python, and its default SHA-1 shingle hash; rensa (if installed) gets the same shingles. Ratios are
to `MinHash.bulk`; above 1 means faster.

    .venv/bin/python benchmarks/minhash_bench.py               # ~730 real web documents
    .venv/bin/python benchmarks/minhash_bench.py --repeat 4    # the same, 4 times over
"""
from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import torch  # noqa: E402
from datasketch import MinHash  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from stages.dedup.minhash import MinHashParams, signatures  # noqa: E402

FOLD = re.compile(r"[^\w\s]+|\s+")  # close to Sluice's punctuation/whitespace folding


def web_documents() -> list[str]:
    texts = []
    for path in sorted((SHARED / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts


def python_shingles(text: str, n: int) -> list[bytes]:
    words = FOLD.sub(" ", text.lower()).split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def datasketch_update(texts: list[str], p: MinHashParams) -> None:
    for t in texts:
        m = MinHash(num_perm=p.num_perm, seed=p.seed)
        for s in python_shingles(t, p.ngram):
            m.update(s)


def datasketch_update_batch(texts: list[str], p: MinHashParams) -> None:
    for t in texts:
        MinHash(num_perm=p.num_perm, seed=p.seed).update_batch(python_shingles(t, p.ngram))


def datasketch_bulk(texts: list[str], p: MinHashParams) -> None:
    MinHash.bulk([python_shingles(t, p.ngram) for t in texts], num_perm=p.num_perm, seed=p.seed)


def rensa_rminhash(texts: list[str], p: MinHashParams) -> None:
    from rensa import RMinHash

    for t in texts:
        RMinHash(p.num_perm, p.seed).update([s.decode() for s in python_shingles(t, p.ngram)])


def sluice(backend: str) -> Callable[[list[str], MinHashParams], None]:
    def run(texts: list[str], p: MinHashParams) -> None:
        for lo in range(0, len(texts), 1000):  # the batch size a Ray Data map_batches call sees
            signatures(texts[lo:lo + 1000], p, backend)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1, help="use the document set this many times")
    ap.add_argument("--num-perm", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts = web_documents() * args.repeat
    params = MinHashParams(num_perm=args.num_perm)
    methods = {
        "datasketch MinHash.update (per shingle)": datasketch_update,
        "datasketch MinHash.update_batch": datasketch_update_batch,
        "datasketch MinHash.bulk": datasketch_bulk,
        "sluice numpy": sluice("numpy"),
        f"sluice torch ({'cuda' if torch.cuda.is_available() else 'cpu'})": sluice("torch"),
    }
    if importlib.util.find_spec("rensa"):
        methods["rensa RMinHash"] = rensa_rminhash
    sluice("numpy")(texts[:50], params)  # warm caches and imports
    words = sum(len(t.split()) for t in texts)
    print(f"{len(texts)} documents, {words / len(texts):.0f} words each on average, num_perm={params.num_perm}, one core")
    rates = {}
    for name, fn in methods.items():
        start = time.perf_counter()
        fn(texts, params)
        rates[name] = len(texts) / (time.perf_counter() - start)
    base = rates["datasketch MinHash.bulk"]
    print(f"{'method':44s} {'docs/s':>10s} {'vs bulk':>8s}")
    for name, rate in rates.items():
        print(f"{name:44s} {rate:10,.0f} {rate / base:7.2f}x")


if __name__ == "__main__":
    main()
