"""Quality-classifier scoring throughput (docs/s), plus the held-out metrics of the model it trains.

    .venv/bin/python benchmarks/quality_bench.py [--docs N] [--chars C] [--model PATH]

Trains a small classifier (WikiText-2 valid paragraphs vs SMS/YouTube spam) unless --model is given,
then scores N Common Crawl-sized documents (C characters each, cut from WikiText-2 test.txt) in one process.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from quality.classifier import read_documents, score, train_texts

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def spam(data: Path) -> list[str]:
    with open(data / "sms-spam" / "SMSSpamCollection.tsv", encoding="utf-8") as f:
        out = [row[1] for row in list(csv.reader(f, delimiter="\t"))[1:] if row[0] == "spam"]
    for path in sorted((data / "youtube-spam").glob("*.csv")):
        with open(path, encoding="utf-8") as f:
            out += [r["CONTENT"] for r in csv.DictReader(f) if r["CLASS"] == "1"]
    return out


def documents(data: Path, n: int, chars: int) -> list[str]:
    text = (data / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    return [text[(i * chars) % (len(text) - chars):][:chars] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20_000)
    ap.add_argument("--chars", type=int, default=2_000)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "quality.bin"
            positive = [p for p in read_documents(args.data / "wikitext-2" / "valid.txt") if not p.startswith("=")]
            metrics = train_texts(positive, spam(args.data), model)
            print(f"held-out: precision {metrics.precision:.3f} recall {metrics.recall:.3f} "
                  f"F1 {metrics.f1:.3f} ROC AUC {metrics.roc_auc:.4f} "
                  f"({metrics.test['positive']} + {metrics.test['negative']} docs)")
        docs = documents(args.data, args.docs, args.chars)
        score(docs[:10], model)  # load the model outside the timed part
        start = time.perf_counter()
        score(docs, model)
        elapsed = time.perf_counter() - start
    print(f"scored {len(docs):,} docs of {args.chars:,} chars in {elapsed:.2f} s: "
          f"{len(docs) / elapsed:,.0f} docs/s (one process, normalisation included)")


if __name__ == "__main__":
    main()
