"""HTML main-text extraction quality and speed on the article-extraction benchmark, in one run.

Scores every extractor on the same pages by bag-of-words token F1 against the gold article body
(tokens: lowercased `\\w+` runs; precision, recall, F1 averaged per page; a page where the
extractor returns nothing scores 0), and reports pages/s on one core. Prints a markdown table.

    .venv/bin/python benchmarks/extraction_bench.py [--limit N] [--data DIR]

Needs resiliparse (`pip install -e '.[bench]'`); it is skipped with a note when missing.
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Callable

import lxml.html

from pipeline.readers.html import get_extractor, resiliparse_text, trafilatura_text

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "article-extraction-benchmark"
TOKEN = re.compile(r"\w+")


def naive_text(html: bytes, url: str | None = None) -> str:
    """Baseline: every text node of the page except scripts and styles."""
    tree = lxml.html.fromstring(html)
    for node in tree.xpath("//script|//style|//noscript"):
        node.drop_tree()
    return tree.text_content()


def trafilatura_library_defaults(html: bytes, url: str | None = None) -> str | None:
    import trafilatura

    return trafilatura.extract(html, url=url)


def token_prf(predicted: str | None, gold: str) -> tuple[float, float, float]:
    pred, ref = Counter(TOKEN.findall((predicted or "").lower())), Counter(TOKEN.findall(gold.lower()))
    overlap = sum((pred & ref).values())
    if not overlap:
        return 0.0, 0.0, 0.0
    p, r = overlap / sum(pred.values()), overlap / sum(ref.values())
    return p, r, 2 * p * r / (p + r)


def load_pages(data: Path, limit: int | None) -> list[tuple[bytes, str, str]]:
    gold = json.loads((data / "ground-truth.json").read_text())
    pages = []
    for key in sorted(gold)[:limit]:
        html = gzip.decompress((data / "html" / f"{key}.html.gz").read_bytes())
        pages.append((html, gold[key]["url"], gold[key]["articleBody"]))
    return pages


def score(extract: Callable, pages: list[tuple[bytes, str, str]]) -> dict[str, float]:
    extract(*pages[0][:2])  # warm up (imports, lazy setup) outside the timed loop
    start = time.perf_counter()
    outputs = [extract(html, url) for html, url, _ in pages]
    elapsed = time.perf_counter() - start
    prf = [token_prf(out, gold) for out, (_, _, gold) in zip(outputs, pages)]
    n = len(pages)
    return {"precision": sum(p for p, _, _ in prf) / n, "recall": sum(r for _, r, _ in prf) / n,
            "f1": sum(f for _, _, f in prf) / n, "pages_per_s": n / elapsed}


def extractors() -> dict[str, Callable]:
    found = {
        "trafilatura standard, no comments (Sluice default)": trafilatura_text,
        "trafilatura favor_precision, no comments": partial(trafilatura_text, favor_precision=True),
        "trafilatura favor_recall, no comments": partial(trafilatura_text, favor_recall=True),
        "trafilatura library defaults (with comments)": trafilatura_library_defaults,
    }
    try:
        get_extractor("resiliparse")
        found["resiliparse main_content"] = resiliparse_text
    except ValueError as err:
        print(f"note: {err}")
    found["naive all text (lxml)"] = naive_text
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--limit", type=int, default=None, help="first N pages (default: all 181)")
    args = parser.parse_args()
    pages = load_pages(args.data, args.limit)
    print(f"{len(pages)} pages from {args.data}\n")
    print("| extractor | F1 | precision | recall | pages/s |")
    print("|---|---|---|---|---|")
    for name, extract in extractors().items():
        s = score(extract, pages)
        print(f"| {name} | {s['f1']:.3f} | {s['precision']:.3f} | {s['recall']:.3f} | {s['pages_per_s']:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
