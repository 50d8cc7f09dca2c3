"""The shipped quality classifier (`quality/models/sluice-quality-en.ftz`): its data, one command, its card.

    sluice quality train-default --data ../shared/data --out quality/models/sluice-quality-en.ftz

DCLM-style: reference-quality English as the positive class, web text as it comes (and spam) as the
negative class, both English only (lid.176), a fastText bigram model, quantised. Every document belongs to a *group* (a
WikiText article, a book chunk, a benchmark page: its gold body and its full-page text share the
group) and a group's split is a hash of its key, so the split never depends on what else is in the
data, copies of a page never straddle it, and the curation benchmark can take its clean and junk
documents from the held-out groups only (`documents(...)`, `Doc.split`).

Frankenstein (`pg84.txt`) and WikiText-2 `test.txt` are left out on purpose: the curation benchmark
measures language-model loss on them, so no stage of Sluice may have seen them.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.rundir import atomic_write_bytes
from quality.classifier import (
    DEFAULT_MODEL,
    DEFAULT_THRESHOLD,
    SPLITS,
    ClassifierMetrics,
    TrainParams,
    score,
    sidecar,
    train_on_splits,
)

# Shipped hyper-parameters. 64 dims and bigrams as in DCLM's fastText filter (which used 256 dims on
# far more data); quantised to the 30k most useful rows: a 1.5 MB .ftz, metrics as unquantised.
PARAMS = TrainParams(epoch=5, dim=64, lr=0.1, word_ngrams=2, min_count=2, bucket=500_000, cutoff=30_000, seed=0)
CHUNK_CHARS = 2500  # long texts (books, articles) become documents of consecutive paragraphs up to this size
HELD_OUT_BOOK = "pg84.txt"  # Frankenstein: the curation benchmark's held-out text, never trained on
BOOKS = ("pg1342_with_pg_header.txt", "pg2641.txt", "pg2701.txt", "pg37106.txt", "pg64317.txt")
BOILERPLATE_HEAVY = 0.5  # a benchmark page is a negative when its gold body is under half of its full text
GROUP_SPLIT = ((70, "train"), (85, "calibration"), (100, "test"))  # cumulative percent of groups


@dataclass(frozen=True)
class Source:
    name: str
    positive: bool
    what: str
    licence: str  # from ../shared/data/PROVENANCE.tsv


SOURCES = {s.name: s for s in [
    Source("wikitext-2", True, "WikiText-2 `valid.txt` articles, tokenisation markers undone, in chunks",
           "CC BY-SA 3.0 (Wikipedia text)"),
    Source("gutenberg", True, f"5 Project Gutenberg books ({', '.join(BOOKS)}), licence header/footer cut, in chunks",
           "public domain in the US"),
    Source("gold-articles", True, "gold article bodies of the article-extraction benchmark (news/blog pages), in chunks",
           "MIT (scrapinghub/article-extraction-benchmark)"),
    Source("inaugural", True, "US presidential inaugural addresses (NLTK), in chunks", "public domain"),
    Source("lee-news", True, "Lee et al. (2005) news corpus, `lee_background.cor` (300 ABC news stories)",
           "LGPL-2.1-only as gensim test data; the news texts' own terms are not stated"),
    Source("cc-web-docs", False, "raw Common Crawl documents (Dolma/CCNet JSONL)", "Apache-2.0 (allenai/dolma test data)"),
    Source("wet", False, "Common Crawl WET text records", "MIT (facebookresearch/cc_net), Apache-2.0 (commoncrawl/whirlwind-python)"),
    Source("full-pages", False, "all text of the benchmark's boilerplate-heavy pages (gold body under half the page)",
           "MIT (scrapinghub/article-extraction-benchmark)"),
    Source("sms-spam", False, "spam messages of the UCI SMS Spam Collection", "CC BY 4.0 (UCI)"),
    Source("youtube-spam", False, "spam comments of the UCI YouTube Spam Collection", "CC BY 4.0 (UCI)"),
]}


@dataclass(frozen=True)
class Doc:
    source: str
    group: str
    text: str

    @property
    def positive(self) -> bool:
        return SOURCES[self.source].positive

    @property
    def split(self) -> str:
        return split_of(f"{self.source}:{self.group}" if self.source not in ("gold-articles", "full-pages")
                        else f"page:{self.group}")


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100
    return next(name for limit, name in GROUP_SPLIT if bucket < limit)


# ---------------------------------------------------------------------------------------------
# reading the sources


def chunks(paragraphs: list[str], size: int = CHUNK_CHARS) -> list[str]:
    """Consecutive paragraphs joined into documents of at most about `size` characters."""
    out, current = [], []
    for p in paragraphs:
        if current and sum(map(len, current)) + len(p) > size:
            out.append("\n\n".join(current))
            current = []
        current.append(p)
    return out + (["\n\n".join(current)] if current else [])


_WIKI_MARKER = re.compile(r" @(.)@ ")
_WIKI_HEADING = re.compile(r"^ ?(=+) (.+?) \1 ?$")


def wikitext_articles(path: Path) -> dict[str, list[str]]:
    """WikiText-2 articles (title -> paragraphs) with `@-@` markers joined and `<unk>` dropped."""
    articles: dict[str, list[str]] = {}
    title = None
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = _WIKI_HEADING.match(line)
        if heading and len(heading.group(1)) == 1:
            title = heading.group(2)
            articles[title] = []
        elif title and line.strip() and not heading:
            articles[title].append(_WIKI_MARKER.sub(r"\1", line.replace(" <unk>", "")).strip())
    return articles


def gutenberg_paragraphs(path: Path) -> list[str]:
    """A book's paragraphs between the Project Gutenberg START and END markers, lines unwrapped."""
    text = path.read_text(encoding="cp1252").replace("\r\n", "\n")
    start = text.index("\n", text.index("*** START OF")) + 1
    body = text[start:text.index("*** END OF")]
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if len(p.split()) >= 3]


def gold_and_full_pages(data: Path) -> tuple[list[Doc], list[Doc]]:
    import lxml.html

    folder = data / "article-extraction-benchmark"
    gold = json.loads((folder / "ground-truth.json").read_text())
    positives, negatives = [], []
    for key in sorted(gold):
        body = gold[key]["articleBody"].strip()
        tree = lxml.html.fromstring(gzip.decompress((folder / "html" / f"{key}.html.gz").read_bytes()))
        for node in tree.xpath("//script|//style|//noscript"):
            node.drop_tree()
        page = "\n".join(line.strip() for line in tree.text_content().splitlines() if line.strip())
        positives += [Doc("gold-articles", key, chunk) for chunk in chunks(body.split("\n\n"))]
        if len(body.split()) < BOILERPLATE_HEAVY * len(page.split()):
            negatives.append(Doc("full-pages", key, page))
    return positives, negatives


def wet_records(data: Path) -> list[Doc]:
    """Conversion records of the WET samples, split on the record line by hand: the CCNet sample's
    Content-Length values do not match its bodies, which stops strict WARC parsers."""
    out = []
    for name in ("ccnet_sample.warc.wet.txt", "commoncrawl_whirlwind.warc.wet.gz"):
        raw = (data / "warc-samples" / name).read_bytes()
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8", errors="replace")
        for i, record in enumerate(re.split(r"(?m)^WARC/1\.0\r?\n", text.replace("\r\n", "\n"))):
            header, _, body = record.partition("\n\n")
            if "WARC-Type: conversion" in header and body.strip():
                out.append(Doc("wet", f"{name}:{i}", body.strip()))
    return out


def spam(data: Path) -> list[Doc]:
    with open(data / "sms-spam" / "SMSSpamCollection.tsv", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    out = [Doc("sms-spam", str(i), text) for i, (label, text) in enumerate(rows, 1) if label == "spam"]
    for path in sorted((data / "youtube-spam").glob("*.csv")):
        with open(path, encoding="utf-8") as f:
            out += [Doc("youtube-spam", r["COMMENT_ID"], r["CONTENT"]) for r in csv.DictReader(f) if r["CLASS"] == "1"]
    return out


def cc_documents(data: Path) -> list[Doc]:
    out = []
    for path in sorted((data / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            out += [Doc("cc-web-docs", f"{path.name}:{i}", json.loads(line)["text"]) for i, line in enumerate(f)]
    return out


def documents(data: str | Path) -> list[Doc]:
    """Every training document of every source, in a fixed order, empty and repeated texts dropped."""
    data = Path(data)
    docs = [Doc("wikitext-2", f"{title}:{i}", text)
            for title, paras in wikitext_articles(data / "wikitext-2" / "valid.txt").items()
            for i, text in enumerate(chunks(paras))]
    docs += [Doc("gutenberg", f"{book}:{i}", text) for book in BOOKS
             for i, text in enumerate(chunks(gutenberg_paragraphs(data / "gutenberg" / book)))]
    gold, full = gold_and_full_pages(data)
    docs += gold
    docs += [Doc("inaugural", f"{path.name}:{i}", text)
             for path in sorted((data / "nltk-corpora" / "inaugural").glob("*.txt"))
             for i, text in enumerate(chunks([" ".join(p.split()) for p in re.split(
                 r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace")) if p.strip()]))]
    lee = (data / "gensim-test-data" / "lee_background.cor").read_text(encoding="utf-8", errors="replace")
    docs += [Doc("lee-news", str(i), line.strip()) for i, line in enumerate(lee.splitlines()) if line.strip()]
    docs += cc_documents(data) + wet_records(data) + full + spam(data)
    seen: set[str] = set()
    unique = []
    for d in docs:
        if d.text.strip() and d.text not in seen:
            seen.add(d.text)
            unique.append(d)
    return english(unique, data / "fasttext-lid" / "lid.176.ftz")


def english(docs: list[Doc], lid_model: Path) -> list[Doc]:
    """Only documents lid.176 calls English, in both classes: the pipeline scores English documents
    only, and non-English negatives (half of the Common Crawl sample) would teach the model nothing
    but "not English"."""
    from quality.langid import predict

    langs, _ = predict([d.text for d in docs], str(lid_model))
    return [d for d, lang in zip(docs, langs) if lang == "en"]


# ---------------------------------------------------------------------------------------------
# training, the keep shares, the card


def by_split(docs: list[Doc]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Texts per class and split. In training, a source under half the size of its class's largest
    is repeated up to about half of it, so Gutenberg's thousand chunks do not drown the news articles."""
    positive: dict[str, list[str]] = {s: [] for s in SPLITS}
    negative: dict[str, list[str]] = {s: [] for s in SPLITS}
    train_sizes = Counter(d.source for d in docs if d.split == "train")
    largest = {cls: max(n for src, n in train_sizes.items() if SOURCES[src].positive == cls) for cls in (True, False)}
    for d in docs:
        repeats = max(1, round(largest[d.positive] / (2 * train_sizes[d.source]))) if d.split == "train" else 1
        (positive if d.positive else negative)[d.split].extend([d.text] * repeats)
    return positive, negative


def keep_shares(model: Path, data: Path, docs: list[Doc], threshold: float = DEFAULT_THRESHOLD) -> dict:
    """What the model keeps at `threshold`: the raw Common Crawl sample, the held-out test documents
    per source, and the demo corpus's English documents per label (a 3,000-record `sluice demo` corpus)."""
    import tempfile

    from pipeline.democorpus import labelled_documents

    cc = [d.text for d in cc_documents(data)]
    test = [d for d in docs if d.split == "test"]
    per_source = {}
    for name in SOURCES:
        texts = [d.text for d in test if d.source == name]
        if texts:
            per_source[name] = round(float(np.mean(score(texts, model) >= threshold)), 4)
    with tempfile.TemporaryDirectory() as tmp:
        demo = [d for d in labelled_documents(Path(tmp), n_docs=3000, seed=0) if d["lang"] == "en"]
    by_label: dict[str, list[str]] = {}
    for d in demo:
        by_label.setdefault(d["label"], []).append(d["text"])
    return {
        "threshold": threshold,
        "cc_web_docs": {"docs": len(cc), "kept": round(float(np.mean(score(cc, model) >= threshold)), 4)},
        "test_split_by_source": per_source,
        "demo_english_by_label": {label: {"docs": len(t), "kept": round(float(np.mean(score(t, model) >= threshold)), 4)}
                                  for label, t in sorted(by_label.items())},
    }


def train_default(data: str | Path, out: str | Path = DEFAULT_MODEL, params: TrainParams = PARAMS) -> dict:
    """Build the data, train, calibrate, measure, and write the model, its sidecars and MODEL_CARD.md."""
    data, out = Path(data), Path(out)
    docs = documents(data)
    positive, negative = by_split(docs)
    metrics = train_on_splits(positive, negative, out, params)
    shares = keep_shares(out, data, docs)
    atomic_write_bytes(sidecar(out, "keep"), (json.dumps(shares, indent=2, sort_keys=True) + "\n").encode())
    atomic_write_bytes(out.with_name("MODEL_CARD.md"), model_card(out, docs, metrics, shares, params).encode())
    return {"metrics": metrics.model_dump(mode="json"), "keep": shares}


def model_card(model: Path, docs: list[Doc], metrics: ClassifierMetrics, shares: dict, params: TrainParams) -> str:
    counts = Counter((d.source, d.split) for d in docs)
    rows = "\n".join(
        f"| {s.name} | {'high quality' if s.positive else 'low quality'} | {s.what} | "
        + " | ".join(f"{counts[(s.name, split)]:,}" for split in SPLITS) + f" | {s.licence} |"
        for s in SOURCES.values())
    cal = json.loads(sidecar(model, "calibration").read_text())
    at = metrics.at_threshold
    demo = "\n".join(f"| {label} | {v['docs']:,} | {v['kept']:.1%} |" for label, v in shares["demo_english_by_label"].items())
    per_source = ", ".join(f"{k} {v:.1%}" for k, v in shares["test_split_by_source"].items())
    size = model.stat().st_size
    return f"""# {model.name}: Sluice's default quality classifier

A fastText classifier (labels `__label__hq`, `__label__lq`) in the style of DCLM's quality filter:
reference-quality English as the positive class, Common Crawl text and spam as the negative class.
`quality.classifier` uses it when `model` is null. Its score is a **calibrated probability** of
`__label__hq` (see Calibration), so the default threshold 0.8 keeps documents the model is at least
80 % sure are reference-quality, with the two classes taken as equally likely a priori.

File: `{model.name}`, {size / 1e6:.2f} MB, quantised (`cutoff` {params.cutoff:,}, `qnorm`). Sidecars:
`{sidecar(model, 'calibration').name}` (the mapping `score` applies), `{sidecar(model, 'metrics').name}`,
`{sidecar(model, 'keep').name}` (the keep shares below).

## Rebuild it

```bash
sluice quality train-default --data ../shared/data --out quality/models/{model.name}
```

Deterministic: one fastText thread, seed {params.seed}, splits by hash of each document's group,
so the command writes the same model (byte for byte on the same fastText build; `tests/test_quality.py`
retrains it and checks its held-out metrics against this card's, within 0.01 ROC AUC and 0.02 F1). Hyper-parameters: epoch {params.epoch},
dim {params.dim}, lr {params.lr}, word n-grams {params.word_ngrams}, min count {params.min_count},
{params.bucket:,} hash buckets.

## Data

Distinct documents per split (train / calibration / test; a group's split is fixed by a hash of
its key, 70 / 15 / 15 % of groups), English only (lid.176 says `en`; this drops half of the Common
Crawl sample). In training, a source under half the size of its class's largest is repeated up to
about half of it. Text is normalised as DCLM does (lowercase, punctuation split off, digits to 0)
before training and scoring. Frankenstein and WikiText-2 `test.txt` are left out: the curation
benchmark evaluates language models on them.

| source | class | what | train | calibration | test | licence |
|---|---|---|---:|---:|---:|---|
{rows}

Licences are those recorded for `../shared/data` in its PROVENANCE.tsv. The model is a statistical
summary of these texts (word and bigram embeddings); CC BY-SA text (WikiText-2) is among its
inputs, so treat the model file as CC BY-SA 3.0 when you redistribute it.

## Held-out metrics (test split, calibrated scores)

| | precision | recall | F1 | ROC AUC |
|---|---:|---:|---:|---:|
| threshold 0.5 | {metrics.precision:.3f} | {metrics.recall:.3f} | {metrics.f1:.3f} | {metrics.roc_auc:.4f} |
| threshold 0.8 | {at['precision']:.3f} | {at['recall']:.3f} | {at['f1']:.3f} | |

Test split: {metrics.test['positive']:,} high-quality and {metrics.test['negative']:,} low-quality documents.
Brier score {metrics.brier:.4f}; class-balanced expected calibration error {metrics.ece:.4f}.

## Calibration

fastText's own probabilities crowd at 0 and 1. Platt scaling maps them: p = sigmoid(a · logit(raw) + b)
with a = {cal['a']:.4f}, b = {cal['b']:.4f}, fitted by maximum likelihood on the calibration split
({cal['fitted_on']['positive']:,} + {cal['fitted_on']['negative']:,} documents), the two classes weighted equally. `quality/classifier.py` `score` applies it; the calibration and test splits are
disjoint from training and from each other.

## What it keeps at 0.8

- Common Crawl sample (`cc-web-docs`, all {shares['cc_web_docs']['docs']:,} raw documents in every language;
  its English ones are split into this model's data): **{shares['cc_web_docs']['kept']:.1%}** kept.
- Held-out test documents, per source: {per_source}.
- The demo corpus (`sluice demo`, 3,000 records, seed 0), English documents by label, classifier alone:

| label | documents | kept |
|---|---:|---:|
{demo}

## Limits

English only: other languages score low (the pipeline scores only `quality.classifier.languages`).
The positives are encyclopaedic, literary, news and speech prose; good text in other registers
(forums, recipes, product documentation) scores lower than it deserves. Trained on a few thousand
documents, far fewer than DCLM's classifier: use it as a default, and train your own with
`sluice quality train` for a real corpus.
"""
