"""Near-duplicate recall by true Jaccard (the S-curve) on real text: Sluice against its peers.

The corpus: real text from ../shared/data (Common Crawl documents, WikiText-2 articles, Gutenberg
books, Lee news, US inaugural addresses, Shakespeare) cut into pieces of 1-10 KB, plus one edited
copy each of a random 30 % of the pieces (words substituted, inserted or deleted at a rate drawn so
the copies' true Jaccard spreads over [threshold - 0.4, 1]). True Jaccard is measured exactly on
the shingle sets `dedup.fuzzy.threshold` is defined on (normalised word 5-grams). Each base has at
most one copy, so a pair is merged only through its own edge, and the table shows the S-curve:
the share of injected pairs each method puts in one cluster, per true-Jaccard bucket.

Pieces come from distinct texts, but real text repeats itself (Gutenberg's licence in every book,
news items and web pages published twice), so two documents of different families in one cluster
are counted ("cross-family"), and a false merge is such a pair that no chain of pairs with true
Jaccard >= threshold inside its cluster connects.

Methods, all in one process each (so peak memory is the method's own), single-threaded, warmed on
the first 300 documents and then timed `--repeat` times on the whole corpus (median shown):
  sluice                 stages.fuzzy_dedup.process: bands x rows derived for recall >= 0.95 at the
                         threshold, candidates verified by exact shingle-set Jaccard
  datasketch@same        MinHash.bulk + MinHashLSH at Sluice's bands x rows (128 perms), candidates
                         verified by estimated Jaccard, union-find
  datasketch@default     the same at MinHashLSH's own default bands x rows for the threshold
  rensa@same             RMinHash + RMinHashLSH at Sluice's bands x rows (rensa needs bands to divide
                         num_perm, so num_perm = bands x rows), estimated-Jaccard verification
Peers get the same normalisation and word 5-grams, built in Python.

    .venv/bin/python benchmarks/dedup_bench.py                       # 4,000 documents, threshold 0.8
    .venv/bin/python benchmarks/dedup_bench.py --docs 10000 --threshold 0.7
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from pipeline.config import FuzzyDedupConfig  # noqa: E402
from stages.dedup.jaccard import jaccard, shingle_sets  # noqa: E402
from stages.dedup.lsh import lsh_params  # noqa: E402
from stages.dedup.minhash import MinHashParams  # noqa: E402

FOLD = re.compile(r"[^\w\s]+|\s+")
NUM_PERM = 128
WARM_DOCS = 300
METHODS = {"sluice": "stages", "datasketch@same": "datasketch", "datasketch@default": "datasketch",
           "rensa@same": "rensa"}


# ---------------------------------------------------------------- corpus

def source_texts() -> list[str]:
    """Whole real texts, each from a different document or book."""
    import gzip

    texts = []
    for path in sorted((SHARED / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    for name in ("test.txt", "valid.txt"):  # articles start with a " = Title = " line
        texts += re.split(r"\n = [^=\n]+ = \n", (SHARED / "wikitext-2" / name).read_text(encoding="utf-8"))
    for path in sorted((SHARED / "gutenberg").glob("*.txt")):
        if path.name != "pg1342_with_pg_header.txt":  # the same novel as gitenberg_1342-0
            texts.append(path.read_text(encoding="utf-8" if path.name.startswith("gitenberg") else "cp1252"))
    texts += (SHARED / "gensim-test-data" / "lee_background.cor").read_text(encoding="utf-8").splitlines()
    texts += [p.read_text(encoding="utf-8", errors="replace")
              for p in sorted((SHARED / "nltk-corpora" / "inaugural").glob("*.txt"))]
    texts.append((SHARED / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8"))
    return [t for t in texts if t.strip()]


def pieces(texts: list[str], rng: np.random.Generator) -> list[str]:
    """Every text cut into consecutive pieces of 1-10 KB (log-uniform), on word boundaries."""
    out = []
    for text in texts:
        words = text.split()
        start = 0
        while start < len(words):
            size = int(np.exp(rng.uniform(np.log(1000), np.log(10000))))
            end, chars = start, 0
            while end < len(words) and chars < size:
                chars += len(words[end]) + 1
                end += 1
            if chars >= 1000:
                out.append(" ".join(words[start:end]))
            start = end
    return out


def edit(words: list[str], rate: float, vocab: list[str], rng: np.random.Generator) -> list[str]:
    """Substitute, delete or insert words, each at about `rate` / 3 per word."""
    out = []
    for w in words:
        op = rng.random()
        if op < rate / 3:
            out.append(vocab[rng.integers(len(vocab))])
        elif op < 2 * rate / 3:
            continue
        elif op < rate:
            out += [w, vocab[rng.integers(len(vocab))]]
        else:
            out.append(w)
    return out


def make_corpus(n_docs: int, threshold: float, seed: int = 0) -> pa.Table:
    """Documents with `family` (the piece a copy comes from) and, on copies, `true_jaccard`."""
    rng = np.random.default_rng(seed)
    pool = pieces(source_texts(), rng)
    n_copies = int(n_docs * 0.3)
    n_base = n_docs - n_copies
    if n_base > len(pool):
        raise SystemExit(f"only {len(pool)} real pieces: ask for at most {int(len(pool) / 0.7)} documents")
    bases = [pool[i] for i in rng.choice(len(pool), n_base, replace=False)]
    vocab = [w for b in bases[:200] for w in b.split()]
    params = MinHashParams()
    texts, family, truth = list(bases), list(range(n_base)), [None] * n_base
    low = max(0.05, threshold - 0.4)
    for b in rng.choice(n_base, n_copies, replace=False):
        target = rng.uniform(low, 1.0)
        kept = (2 * target / (1 + target)) ** (1 / 5)  # word survival rate giving that 5-gram Jaccard
        copy = " ".join(edit(bases[b].split(), 1.0 - kept, vocab, rng))
        texts.append(copy)
        family.append(int(b))
        truth.append(jaccard(*shingle_sets([bases[b], copy], params)))
    order = rng.permutation(len(texts))
    return pa.table({"id": [f"doc-{i:07d}" for i in range(len(texts))], "text": [texts[i] for i in order],
                     "family": [family[i] for i in order],
                     "true_jaccard": pa.array([truth[i] for i in order], pa.float64())})


# ---------------------------------------------------------------- methods

def union_find_labels(n: int, pairs) -> list[int]:
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]


def python_shingles(text: str, n: int = 5) -> list[bytes]:
    words = FOLD.sub(" ", text.lower()).split()
    if len(words) < n:
        return [" ".join(words).encode()]
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


def run_sluice(texts: list[str], threshold: float) -> list[int]:
    from stages import fuzzy_dedup

    n = len(texts)
    rows = pa.table({"source": ["bench"] * n, "id": [f"{i:07d}" for i in range(n)], "text": texts,
                     "_piece": pa.array([0] * n, pa.int32()), "_row": pa.array(range(n), pa.int32())})
    out = fuzzy_dedup.process(rows, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(threshold=threshold)))
    labels = list(range(n))
    for row, keeper in zip(out.decisions["_row"].to_pylist(), out.decisions["duplicate_of"].to_pylist()):
        labels[row] = int(keeper)
    return labels


def run_datasketch(texts: list[str], threshold: float, params: tuple[int, int] | None) -> list[int]:
    from datasketch import MinHash, MinHashLSH

    sketches = MinHash.bulk([python_shingles(t) for t in texts], num_perm=NUM_PERM)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM, params=params)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    pairs = ((i, j) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j > i and m.jaccard(sketches[j]) >= threshold)
    return union_find_labels(len(texts), pairs)


def run_rensa(texts: list[str], threshold: float, bands: int, rows: int) -> list[int]:
    from rensa import RMinHash, RMinHashLSH

    sketches = []
    for text in texts:
        m = RMinHash(bands * rows, 1)
        m.update([s.decode() for s in python_shingles(text)])
        sketches.append(m)
    lsh = RMinHashLSH(threshold, bands * rows, bands)
    for i, m in enumerate(sketches):
        lsh.insert(i, m)
    pairs = ((i, j) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j > i and m.jaccard(sketches[j]) >= threshold)
    return union_find_labels(len(texts), pairs)


def method_fn(method: str, threshold: float):
    bands, rows = lsh_params(threshold, NUM_PERM)
    return {
        "sluice": lambda t: run_sluice(t, threshold),
        "datasketch@same": lambda t: run_datasketch(t, threshold, (bands, rows)),
        "datasketch@default": lambda t: run_datasketch(t, threshold, None),
        "rensa@same": lambda t: run_rensa(t, threshold, bands, rows),
    }[method]


def bands_rows(method: str, threshold: float) -> str:
    if method == "datasketch@default":
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
        return f"{lsh.b}x{lsh.r}"
    bands, rows = lsh_params(threshold, NUM_PERM)
    return f"{bands}x{rows}"


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(method: str, corpus: Path, threshold: float, repeat: int) -> dict:
    """In a child process: warm on a slice, then time `repeat` runs on everything."""
    texts = pq.read_table(corpus, columns=["text"])["text"].to_pylist()
    fn = method_fn(method, threshold)
    fn(texts[:WARM_DOCS])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        labels = fn(texts)
        times.append(time.perf_counter() - start)
    return {"method": method, "seconds": statistics.median(times), "peak_mb": peak_rss_mb(), "labels": labels}


# ---------------------------------------------------------------- scoring

def bucket_edges(threshold: float) -> list[float]:
    return [round(e, 2) for e in (threshold - 0.4, threshold - 0.2, threshold - 0.1, threshold - 0.05, threshold,
                                  threshold + 0.05, threshold + 0.1, threshold + 0.15) if e > 0] + [1.0001]


def s_curve(table: pa.Table, labels: list[int], threshold: float) -> list[tuple[str, int, float]]:
    """Per true-Jaccard bucket: (bucket, injected pairs, share merged)."""
    family, truth = table["family"].to_pylist(), table["true_jaccard"].to_pylist()
    base_row = {f: i for i, (f, t) in enumerate(zip(family, truth)) if t is None}
    merged = [(t, labels[i] == labels[base_row[family[i]]]) for i, t in enumerate(truth) if t is not None]
    edges = bucket_edges(threshold)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        hits = [m for t, m in merged if lo <= t < hi]
        out.append((f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}", len(hits),
                    sum(hits) / len(hits) if hits else float("nan")))
    return out


def false_merges(table: pa.Table, labels: list[int], threshold: float) -> tuple[int, int]:
    """(pairs of different families in one cluster, those of them no chain of true-Jaccard >= threshold
    pairs inside their cluster connects: merges the threshold does not justify)."""
    family, texts = table["family"].to_pylist(), table["text"].to_pylist()
    clusters: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        clusters.setdefault(label, []).append(i)
    cross = unsupported = 0
    for members in clusters.values():
        if len({family[i] for i in members}) < 2:
            continue
        sets = shingle_sets([texts[i] for i in members], MinHashParams())
        close = [(x, y) for x in range(len(members)) for y in range(x + 1, len(members))
                 if jaccard(sets[x], sets[y]) >= threshold]
        true_label = union_find_labels(len(members), close)
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                if family[members[x]] != family[members[y]]:
                    cross += 1
                    unsupported += true_label[x] != true_label[y]
    return cross, unsupported


def installed(method: str) -> bool:
    return importlib.util.find_spec(METHODS[method]) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--run", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run, args.corpus, args.threshold, args.repeat)))
        return
    table = make_corpus(args.docs, args.threshold)
    n_pairs = sum(t is not None for t in table["true_jaccard"].to_pylist())
    mb = sum(len(t.encode()) for t in table["text"].to_pylist()) / 1e6
    print(f"{table.num_rows} real-text documents ({mb:.1f} MB), {n_pairs} injected near copies, "
          f"threshold {args.threshold}, num_perm {NUM_PERM}, word 5-grams; one process per method, one thread, "
          f"warmed on {WARM_DOCS} docs, median of {args.repeat} runs")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.parquet"
        pq.write_table(table, corpus)
        for method in args.methods:
            if not installed(method):
                print(f"{method}: not installed (pip install -e .[bench])")
                continue
            out = subprocess.run([sys.executable, __file__, "--run", method, "--corpus", str(corpus),
                                  "--threshold", str(args.threshold), "--repeat", str(args.repeat)],
                                 capture_output=True, text=True)
            if out.returncode:
                print(f"{method}: failed: {out.stderr.strip().splitlines()[-1:]}")
                continue
            results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(results)
    print(f"\nrecall of injected pairs by true Jaccard (target >= 0.95 from {args.threshold + 0.05:.2f}, "
          f"<= 0.05 below {args.threshold - 0.1:.2f})")
    print(f"{'true Jaccard':14s} {'pairs':>6s} " + " ".join(f"{m:>19s}" for m in names))
    curves = {m: s_curve(table, results[m]["labels"], args.threshold) for m in names}
    for k, (bucket, count, _) in enumerate(next(iter(curves.values()), [])):
        print(f"{bucket:14s} {count:6d} " + " ".join(f"{curves[m][k][2]:19.3f}" for m in names))
    print(f"\n{'method':19s} {'bands x rows':>12s} {'docs/s':>8s} {'peak MB':>8s} {'cross-family':>13s} "
          f"{'false merges':>13s}")
    for m in names:
        r = results[m]
        cross, false = false_merges(table, r["labels"], args.threshold)
        print(f"{m:19s} {bands_rows(m, args.threshold):>12s} {table.num_rows / r['seconds']:8,.0f} "
              f"{r['peak_mb']:8,.0f} {cross:13d} {false:13d}")


if __name__ == "__main__":
    main()
