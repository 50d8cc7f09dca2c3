"""fastText quality classifiers: train one from positive/negative files, score documents with any.

Text is normalised the way DCLM prepares fastText input (one line, lowercased, punctuation split off
as tokens, digits folded to 0, whitespace collapsed), at training and at scoring time alike, so
surface noise such as casing or tokenisation style (WikiText's " @-@ ") matters less than wording.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import re
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.rundir import atomic_write_json
from quality.langid import load_fasttext

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"
TEXT_COLUMNS = ("text", "content", "sms", "body", "comment")
_PUNCT = re.compile(r"([^\w\s])")
_DIGITS = re.compile(r"\d")
_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DIGITS.sub("0", _PUNCT.sub(r" \1 ", text))
    return _SPACE.sub(" ", text).strip()


# ---------------------------------------------------------------------------------------------
# reading training files


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _text_column(columns: list[str], wanted: str | None, path: Path) -> str:
    by_lower = {c.lower(): c for c in columns}
    for name in ([wanted] if wanted else TEXT_COLUMNS):
        if name.lower() in by_lower:
            return by_lower[name.lower()]
    raise ValueError(f"{path}: no text column ({wanted or ' / '.join(TEXT_COLUMNS)}) among {columns}")


def read_documents(path: str | Path, text_column: str | None = None) -> list[str]:
    """Documents in a training file, by extension (optionally .gz):
    .jsonl/.json: one JSON object per line; .csv/.tsv: a header row; .parquet; anything else is
    plain text with one document per paragraph (blank-line separated), or per line when the file has
    no blank lines. Tabular files use `text_column`, else the first of text/content/sms/body/comment."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        frame = pl.read_parquet(path)
    elif kind in (".csv", ".tsv"):
        frame = pl.read_csv(io.StringIO(_open_text(path)), separator="\t" if kind == ".tsv" else ",",
                            quote_char=None if kind == ".tsv" else '"', infer_schema=False)
    elif kind in (".jsonl", ".json"):
        records = [json.loads(line) for line in _open_text(path).splitlines() if line.strip()]
        frame = pl.DataFrame({"text": [r.get(text_column or "text") for r in records]})
    else:
        text = _open_text(path).strip()
        parts = re.split(r"\n\s*\n", text) if re.search(r"\n\s*\n", text) else text.split("\n")
        return [p.strip() for p in parts if p.strip()]
    column = _text_column(frame.columns, text_column, path)
    return [t.strip() for t in frame[column].cast(pl.String).drop_nulls().to_list() if t.strip()]


# ---------------------------------------------------------------------------------------------
# training and evaluation


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties count half)."""
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=bool)
    ranks = rankdata(scores)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    labels = np.asarray(labels, dtype=bool)
    predicted = scores >= threshold
    tp = int((predicted & labels).sum())
    precision = tp / max(int(predicted.sum()), 1)
    recall = tp / max(int(labels.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "roc_auc": roc_auc(labels, scores)}


def _split(docs: list[str], holdout: float, rng: random.Random) -> tuple[list[str], list[str]]:
    docs = sorted(set(docs))  # exact copies would leak across the split
    rng.shuffle(docs)
    cut = max(1, round(len(docs) * holdout))
    return docs[cut:], docs[:cut]


def train_texts(
    positive: list[str],
    negative: list[str],
    out: str | Path,
    *,
    holdout: float = 0.1,
    seed: int = 0,
    epoch: int = 5,
    dim: int = 64,
    lr: float = 0.1,
    word_ngrams: int = 2,
    threads: int = 1,
) -> dict:
    """Train on a stratified (1 - holdout) split, evaluate on the rest, save the model atomically.

    One thread by default: fastText's Hogwild updates make multi-threaded training nondeterministic.
    """
    import fasttext

    if not positive or not negative:
        raise ValueError("need at least one positive and one negative document")
    rng = random.Random(seed)
    pos_train, pos_test = _split(positive, holdout, rng)
    neg_train, neg_test = _split(negative, holdout, rng)
    lines = [f"{POSITIVE} {normalize(t)}" for t in pos_train] + [f"{NEGATIVE} {normalize(t)}" for t in neg_train]
    rng.shuffle(lines)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        train_file.write_text("\n".join(lines) + "\n")
        model = fasttext.train_supervised(
            input=str(train_file), epoch=epoch, dim=dim, lr=lr, wordNgrams=word_ngrams,
            minCount=1, thread=threads, seed=seed, verbose=0)
    tmp_out = out.with_name(f".{out.name}.tmp")
    model.save_model(str(tmp_out))
    tmp_out.replace(out)
    load_fasttext.cache_clear()  # a model saved under a reused path must be re-read
    test_scores = score(pos_test + neg_test, out, POSITIVE)
    labels = np.array([True] * len(pos_test) + [False] * len(neg_test))
    metrics = {
        **binary_metrics(labels, test_scores),
        "train": {"positive": len(pos_train), "negative": len(neg_train)},
        "test": {"positive": len(pos_test), "negative": len(neg_test)},
        "label": POSITIVE,
        "params": {"epoch": epoch, "dim": dim, "lr": lr, "word_ngrams": word_ngrams, "seed": seed},
    }
    atomic_write_json(out.with_name(out.name + ".metrics.json"), metrics)
    return metrics


def train_classifier(positive: list[Path], negative: list[Path], out: Path, *,
                     text_column: str | None = None, **params) -> dict:
    """`sluice quality train`: documents from the positive and negative files, then `train_texts`."""
    pos = [d for p in positive for d in read_documents(p, text_column)]
    neg = [d for p in negative for d in read_documents(p, text_column)]
    return train_texts(pos, neg, out, **params)


# ---------------------------------------------------------------------------------------------
# scoring


def score(texts: list[str | None], model: str | Path, label: str = POSITIVE) -> np.ndarray:
    """Probability of `label` for each text (0 for empty texts or a label the model lacks)."""
    ft = load_fasttext(str(model))
    normalized = [normalize(t or "") for t in texts]
    present = [i for i, t in enumerate(normalized) if t]
    scores = np.zeros(len(texts), dtype=np.float64)
    if present:
        labels, probs = ft.predict([normalized[i] for i in present], k=-1)
        for i, lab, prob in zip(present, labels, probs):
            hit = np.flatnonzero(np.asarray(lab) == label)
            scores[i] = min(float(prob[hit[0]]), 1.0) if hit.size else 0.0
    return scores
