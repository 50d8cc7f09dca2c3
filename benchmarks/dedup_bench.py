"""End-to-end near-duplicate detection on a generated corpus with known clusters: Sluice vs peers.

The corpus: base documents of 150-500 words drawn from the word frequencies of real English text
(WikiText-2 and Shakespeare), plus near copies of random bases (0.2-2% of words substituted,
deleted or inserted), so every document's true cluster is known. Each method runs in its own
process, on the same Parquet file: docs/s (reading excluded), peak resident memory of that
process (the Ray driver's, for sluice-ray), and pairwise precision / recall / F1 of its clusters against the truth. Peers run only
when installed (`pip install -e .[bench]`): datasketch (`MinHash.bulk` + `MinHashLSH`) and rensa
(`RMinHash` + `RMinHashLSH`); both verify candidates by estimated Jaccard, as Sluice does. Ray is
started and warmed before its timing starts, as a long-lived cluster would be.

    .venv/bin/python benchmarks/dedup_bench.py                   # 10,000 documents
    .venv/bin/python benchmarks/dedup_bench.py --docs 100000     # the issue's size
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from pipeline.config import FuzzyDedupConfig, parse_config  # noqa: E402
from pipeline.schema import DOC_SCHEMA  # noqa: E402
from stages.lsh import lsh_params  # noqa: E402

FOLD = re.compile(r"[^\w\s]+|\s+")
# what each method imports: loaded before its timer starts, and how "installed" is decided
MODULES = {"sluice": "stages.fuzzy_dedup", "sluice-ray": "stages.fuzzy_dedup", "datasketch": "datasketch",
           "rensa": "rensa"}
METHODS = list(MODULES)


def make_corpus(n_docs: int, seed: int = 0) -> pa.Table:
    """Documents with a `truth` column: the index of the base document each one comes from."""
    rng = np.random.default_rng(seed)
    text = " ".join((SHARED / p).read_text(encoding="utf-8") for p in
                    ["wikitext-2/test.txt", "wikitext-2/valid.txt", "tinyshakespeare/input.txt"])
    counts = Counter(w for w in FOLD.sub(" ", text.lower()).split() if w.isalpha())
    vocab = np.array(list(counts))
    freq = np.array(list(counts.values()), float)
    freq /= freq.sum()
    n_base = int(n_docs * 0.6)
    bases = [rng.choice(vocab, size=int(rng.integers(150, 500)), p=freq) for _ in range(n_base)]
    texts, truth = [" ".join(b) for b in bases], list(range(n_base))
    for _ in range(n_docs - n_base):
        base = int(rng.integers(n_base))
        words = list(bases[base])
        for _ in range(max(1, int(len(words) * rng.uniform(0.002, 0.02)))):
            i, op = int(rng.integers(len(words))), rng.integers(3)
            if op == 0:
                words[i] = str(rng.choice(vocab, p=freq))
            elif op == 1:
                del words[i]
            else:
                words.insert(i, str(rng.choice(vocab, p=freq)))
        texts.append(" ".join(words))
        truth.append(base)
    order = rng.permutation(n_docs)
    table = pa.table({"id": [f"doc-{i:07d}" for i in range(n_docs)], "text": [texts[i] for i in order],
                      "source": ["bench"] * n_docs, "url": [None] * n_docs, "meta": [None] * n_docs})
    return table.cast(DOC_SCHEMA).append_column("truth", pa.array([truth[i] for i in order]))


def pairwise_scores(truth: list[int], predicted: list[str]) -> dict[str, float]:
    """Precision, recall and F1 over all pairs of documents put in one cluster."""
    def pairs(counter: Counter) -> int:
        return sum(c * (c - 1) // 2 for c in counter.values())

    together = pairs(Counter(zip(truth, predicted)))
    found, true = pairs(Counter(predicted)), pairs(Counter(truth))
    precision = together / found if found else 1.0
    recall = together / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def union_find_labels(ids: list[str], pairs) -> list[str]:
    parent = {i: i for i in ids}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in ids]


def python_shingles(text: str, n: int = 5) -> list[bytes]:
    words = FOLD.sub(" ", text.lower()).split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def run_sluice(table: pa.Table, threshold: float) -> list[str]:
    from stages.fuzzy_dedup import dedup_table

    result, _ = dedup_table(table.drop_columns(["truth"]), FuzzyDedupConfig(threshold=threshold))
    dup_of = dict(zip(result.rejected["id"].to_pylist(), result.rejected["duplicate_of"].to_pylist()))
    return [dup_of.get(i, i) for i in table["id"].to_pylist()]


def run_sluice_ray(table: pa.Table, threshold: float) -> tuple[list[str], float]:
    """The stage's Ray wiring on a warmed local cluster: (labels, seconds)."""
    import ray

    from pipeline.runtime import configure_data_context

    from pipeline.ledger import split
    from pipeline.rundir import RunDir
    from pipeline.stage import StageContext
    from stages.fuzzy_dedup import build

    cfg = parse_config({"dedup": {"fuzzy": {"threshold": threshold}}})
    docs = table.drop_columns(["truth"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    configure_data_context()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.range(10).map_batches(lambda b: b).materialize()  # warm the workers
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(name="fuzzy_dedup", config=cfg, run=RunDir(tmp), workdir=Path(tmp))
        start = time.perf_counter()
        chunk = 2000
        ds = ray.data.from_arrow([docs.slice(i, chunk) for i in range(0, docs.num_rows, chunk)])
        out = split(pa.concat_tables(ray.get(build(ds, ctx).to_arrow_refs())))
        elapsed = time.perf_counter() - start
    dup_of = dict(zip(out.rejected["id"].to_pylist(), out.rejected["duplicate_of"].to_pylist()))
    return [dup_of.get(i, i) for i in table["id"].to_pylist()], elapsed


def run_datasketch(table: pa.Table, threshold: float) -> list[str]:
    from datasketch import MinHash, MinHashLSH

    ids = table["id"].to_pylist()
    sketches = MinHash.bulk([python_shingles(t) for t in table["text"].to_pylist()], num_perm=128)
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    pairs = ((ids[i], ids[j]) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j != i and m.jaccard(sketches[j]) >= threshold)
    return union_find_labels(ids, pairs)


def run_rensa(table: pa.Table, threshold: float) -> list[str]:
    from rensa import RMinHash, RMinHashLSH

    ids = table["id"].to_pylist()
    sketches = []
    for text in table["text"].to_pylist():
        m = RMinHash(128, 1)
        m.update([s.decode() for s in python_shingles(text)])
        sketches.append(m)
    bands, _ = lsh_params(threshold, 128)
    bands = min((b for b in range(2, 129) if 128 % b == 0), key=lambda b: abs(b - bands))  # rensa needs a divisor
    lsh = RMinHashLSH(threshold, 128, bands)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    pairs = ((ids[i], ids[j]) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j != i and m.jaccard(sketches[j]) >= threshold)
    return union_find_labels(ids, pairs)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss it excludes the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(method: str, corpus: Path, threshold: float) -> dict:
    """Runs in a child process, so peak memory is this method's alone."""
    table = pq.read_table(corpus)
    importlib.import_module(MODULES[method])
    if method == "sluice-ray":
        labels, elapsed = run_sluice_ray(table, threshold)
    else:
        fn = {"sluice": run_sluice, "datasketch": run_datasketch, "rensa": run_rensa}[method]
        start = time.perf_counter()
        labels = fn(table, threshold)
        elapsed = time.perf_counter() - start
    peak_mb = peak_rss_mb()
    return {"method": method, "docs_per_s": table.num_rows / elapsed, "peak_mb": peak_mb,
            **pairwise_scores(table["truth"].to_pylist(), labels)}


def installed(method: str) -> bool:
    return importlib.util.find_spec(MODULES[method].split(".")[0]) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--run", choices=METHODS, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.corpus, args.threshold)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.parquet"
        table = make_corpus(args.docs)
        pq.write_table(table, corpus)
        n_true = len(set(table["truth"].to_pylist()))
        print(f"{args.docs} documents in {n_true} true clusters, threshold {args.threshold}, num_perm 128")
        print(f"{'method':12s} {'docs/s':>9s} {'peak MB':>8s} {'precision':>9s} {'recall':>7s} {'F1':>6s}")
        for method in args.methods:
            if not installed(method):
                print(f"{method:12s} (not installed)")
                continue
            out = subprocess.run([sys.executable, __file__, "--run", method, "--corpus", str(corpus),
                                  "--threshold", str(args.threshold)], capture_output=True, text=True)
            if out.returncode:
                print(f"{method:12s} failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{method:12s} {r['docs_per_s']:9,.0f} {r['peak_mb']:8,.0f} {r['precision']:9.4f} "
                  f"{r['recall']:7.4f} {r['f1']:6.4f}")


if __name__ == "__main__":
    main()
