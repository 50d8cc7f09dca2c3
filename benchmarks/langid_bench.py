"""Language-ID accuracy per language on the lingua test sentences, for the languages lid.176 knows.

    .venv/bin/python benchmarks/langid_bench.py [--per-language N] [--model PATH] [--data DIR]

The file name is the gold label (ISO 639-1); labels lid.176 spells differently are mapped first.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from quality.langid import known_languages, predict

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "lingua-langid-testdata" / "sentences"
# lingua's label -> lid.176's label for the same language
TO_FASTTEXT = {"nb": "no"}
MAJOR = ("ar", "de", "en", "es", "fr", "it", "ja", "pt", "ru", "zh")


def sentences(path: Path, limit: int) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:limit]


def accuracy_by_language(data: Path, languages: list[str] | None, limit: int, model: str | None = None
                         ) -> dict[str, tuple[float, int]]:
    """{lingua label: (accuracy, sentences)} for every language lid.176 can name."""
    known = known_languages(model)
    out = {}
    for path in sorted(data.glob("*.txt")):
        gold = TO_FASTTEXT.get(path.stem, path.stem)
        if gold not in known or (languages and path.stem not in languages):
            continue
        texts = sentences(path, limit)
        langs, _ = predict(texts, model)
        out[path.stem] = (sum(lang == gold for lang in langs) / len(texts), len(texts))
    return out


def macro_accuracy(results: dict[str, tuple[float, int]]) -> float:
    return sum(acc for acc, _ in results.values()) / len(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-language", type=int, default=1000, help="sentences per language")
    ap.add_argument("--model", default=None, help="fastText LID model (default: the project's lid.176.ftz)")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    start = time.perf_counter()
    results = accuracy_by_language(args.data, None, args.per_language, args.model)
    elapsed = time.perf_counter() - start
    skipped = sorted(p.stem for p in args.data.glob("*.txt") if p.stem not in results)
    print("| language | accuracy | sentences |\n|---|---:|---:|")
    for lang, (acc, n) in sorted(results.items(), key=lambda kv: -kv[1][0]):
        print(f"| {lang}{' (as ' + TO_FASTTEXT[lang] + ')' if lang in TO_FASTTEXT else ''} | {acc:.3f} | {n} |")
    sentences_total = sum(n for _, n in results.values())
    print(f"\nmacro accuracy, {len(results)} languages: {macro_accuracy(results):.4f}")
    print(f"macro accuracy, 10 major ({', '.join(MAJOR)}): "
          f"{macro_accuracy({k: v for k, v in results.items() if k in MAJOR}):.4f}")
    print(f"not in lid.176: {', '.join(skipped)}")
    print(f"{sentences_total:,} sentences in {elapsed:.1f} s ({sentences_total / elapsed:,.0f} sentences/s, one process)")


if __name__ == "__main__":
    main()
