"""fastText quality classifiers: train one from positive/negative files, calibrate it, score documents.

Text is normalised the way DCLM prepares fastText input (one line, lowercased, punctuation split off
as tokens, digits folded to 0, whitespace collapsed), at training and at scoring time alike, so
surface noise such as casing or tokenisation style (WikiText's " @-@ ") matters less than wording.

A score is a calibrated probability, not fastText's raw softmax: raw probabilities of a model trained
to near-zero loss crowd at 0 and 1, so a threshold such as 0.8 would mean nothing in particular.
Each model carries a Platt mapping fitted on held-out documents (`NAME.calibration.json` beside
`NAME.ftz`), and `score` applies it. `model: null` in the config means the model shipped in
`quality/models/` (see its MODEL_CARD.md; `sluice quality train-default` rebuilds it).
"""
from __future__ import annotations

import functools
import gzip
import io
import json
import random
import re
import tempfile
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import expit

from pipeline.config import ClassifierConfig
from pipeline.rundir import atomic_write_json
from quality.langid import load_fasttext

POSITIVE = "__label__hq"
NEGATIVE = "__label__lq"
TEXT_COLUMNS = ("text", "content", "sms", "body", "comment")
_PUNCT = re.compile(r"([^\w\s])")
_DIGITS = re.compile(r"\d")
_EPS = 1e-6  # raw probabilities are clipped to [EPS, 1 - EPS] before the logit


def normalize(text: str) -> str:
    """DCLM-style fastText input: one lowercased line, punctuation as tokens, digits folded to 0.

    Punctuation is spaced by splitting on it and joining with spaces, the same string as substituting
    " \\1 " but all in C: a substitution with a group reference calls back into Python per match, and
    was 78 % of scoring (the whole normalisation is 2.7x faster, its output unchanged on the 100k
    benchmark corpus)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _DIGITS.sub("0", " ".join(_PUNCT.split(text)))
    return " ".join(text.split())  # str.split() and the `\s` of a str pattern share one whitespace test


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
# the model file and its calibration

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "quality" / "models" / "sluice-quality-en.ftz"


def model_path(configured: str | Path | None = None) -> Path:
    """The configured model, else the one shipped in the repository (`quality/models/`)."""
    path = Path(configured) if configured else DEFAULT_MODEL
    if not path.is_file():
        hint = "" if configured else " (rebuild it with `sluice quality train-default`)"
        raise FileNotFoundError(f"quality classifier model not found: {path}{hint}")
    return path


def sidecar(model: str | Path, kind: str) -> Path:
    """`NAME.<kind>.json` beside `NAME.ftz` / `NAME.bin` (kind: calibration, metrics)."""
    model = Path(model)
    return model.with_name(f"{model.stem}.{kind}.json")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


class Calibration(BaseModel):
    """Platt scaling of the raw fastText probability of `label`, fitted on held-out documents:
    p = sigmoid(a * logit(raw) + b). The two classes weigh equally in the fit, so the calibrated
    score is the probability of `label` for a document drawn from a pool with equal priors."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["platt"] = "platt"
    label: str
    a: float
    b: float
    fitted_on: dict[str, int] = Field(description="held-out documents per class the mapping was fitted on")

    def apply(self, raw: np.ndarray) -> np.ndarray:
        return expit(self.a * _logit(np.asarray(raw, dtype=np.float64)) + self.b)

    @classmethod
    def fit(cls, raw: np.ndarray, labels: np.ndarray, label: str = POSITIVE) -> Calibration:
        """Maximum-likelihood (a, b) under balanced class weights (a convex loss: one optimum)."""
        from scipy.optimize import minimize  # here: every worker that scores imports this module, ~22 MB

        labels = np.asarray(labels, dtype=bool)
        x = _logit(np.asarray(raw, dtype=np.float64))
        weight = np.where(labels, 0.5 / labels.sum(), 0.5 / (~labels).sum())

        def loss(ab: np.ndarray) -> tuple[float, np.ndarray]:
            z = ab[0] * x + ab[1]
            grad = weight * (expit(z) - labels)
            return float(np.sum(weight * (np.logaddexp(0, z) - labels * z))), np.array([grad @ x, grad.sum()])

        a, b = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B").x
        return cls(label=label, a=round(float(a), 6), b=round(float(b), 6),
                   fitted_on={"positive": int(labels.sum()), "negative": int((~labels).sum())})


@functools.lru_cache(maxsize=8)
def load_calibration(model: str) -> Calibration | None:
    """The model's calibration, once per process; None for a model that has none (raw scores)."""
    path = sidecar(model, "calibration")
    return Calibration.model_validate_json(path.read_text()) if path.is_file() else None


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


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Class-balanced ECE: |mean predicted - observed positive share| per probability bin, weighted by
    the bin's share of documents, with each class weighing half (the prior the calibration assumes)."""
    labels = np.asarray(labels, dtype=bool)
    weight = np.where(labels, 0.5 / labels.sum(), 0.5 / (~labels).sum())
    which = np.minimum((probs * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        w = weight[which == b]
        if w.size:
            observed = np.sum(w * labels[which == b]) / w.sum()
            ece += w.sum() * abs(np.sum(w * probs[which == b]) / w.sum() - observed)
    return float(ece)


@dataclass(frozen=True)
class TrainParams:
    """fastText supervised hyper-parameters; `cutoff` > 0 quantises to an .ftz of that many rows."""

    epoch: int = 5
    dim: int = 64
    lr: float = 0.1
    word_ngrams: int = 2
    min_count: int = 1
    bucket: int = 2_000_000
    cutoff: int = 0
    seed: int = 0
    threads: int = 1  # fastText's Hogwild updates make multi-threaded training nondeterministic


class ClassifierMetrics(BaseModel):
    """`NAME.metrics.json`: held-out metrics of a trained classifier, written by training, read by
    the model card, tests and benchmarks. Scores are calibrated; ROC AUC does not depend on it."""

    model_config = ConfigDict(extra="forbid")

    label: str
    precision: float  # at the calibrated 0.5
    recall: float
    f1: float
    roc_auc: float
    at_threshold: dict[str, float] = Field(description="precision/recall/F1 at the default threshold 0.8")
    brier: float
    ece: float = Field(description="class-balanced expected calibration error, 10 bins")
    train: dict[str, int]
    calibration: dict[str, int]
    test: dict[str, int]
    params: dict[str, float | int]


SPLITS = ("train", "calibration", "test")
DEFAULT_THRESHOLD = 0.8


def _fasttext_lines(positive: list[str], negative: list[str], rng: random.Random) -> list[str]:
    lines = [f"{POSITIVE} {normalize(t)}" for t in positive] + [f"{NEGATIVE} {normalize(t)}" for t in negative]
    rng.shuffle(lines)
    return lines


def train_on_splits(positive: dict[str, list[str]], negative: dict[str, list[str]], out: str | Path,
                    params: TrainParams = TrainParams()) -> ClassifierMetrics:
    """Fit on the `train` split, Platt-calibrate on `calibration`, measure on `test`; write the model,
    NAME.calibration.json and NAME.metrics.json atomically (all three temp-then-rename)."""
    import fasttext

    for split in SPLITS:
        if not positive.get(split) or not negative.get(split):
            raise ValueError(f"the {split} split needs at least one positive and one negative document")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"
        lines = _fasttext_lines(positive["train"], negative["train"], random.Random(params.seed))
        train_file.write_text("\n".join(lines) + "\n")
        model = fasttext.train_supervised(
            input=str(train_file), epoch=params.epoch, dim=params.dim, lr=params.lr, wordNgrams=params.word_ngrams,
            minCount=params.min_count, bucket=params.bucket, thread=params.threads, seed=params.seed, verbose=0)
        if params.cutoff:
            model.quantize(input=str(train_file), cutoff=params.cutoff, retrain=True, qnorm=True,
                           thread=params.threads, verbose=0)
        model.save_model(str(tmp_out))
    tmp_out.replace(out)
    load_fasttext.cache_clear()  # a model saved under a reused path must be re-read
    load_calibration.cache_clear()

    def raw(split: str) -> tuple[np.ndarray, np.ndarray]:
        texts = positive[split] + negative[split]
        labels = np.array([True] * len(positive[split]) + [False] * len(negative[split]))
        return _raw_scores(texts, load_fasttext(str(out)), POSITIVE), labels

    calibration = Calibration.fit(*raw("calibration"))
    atomic_write_json(sidecar(out, "calibration"), calibration.model_dump(mode="json"))
    load_calibration.cache_clear()
    test_raw, labels = raw("test")
    probs = calibration.apply(test_raw)
    counts = {s: {"positive": len(positive[s]), "negative": len(negative[s])} for s in SPLITS}
    at = binary_metrics(labels, probs, DEFAULT_THRESHOLD)
    metrics = ClassifierMetrics(
        label=POSITIVE, **binary_metrics(labels, probs),
        at_threshold={k: round(v, 6) for k, v in at.items() if k != "roc_auc"} | {"threshold": DEFAULT_THRESHOLD},
        brier=float(np.mean((probs - labels) ** 2)), ece=expected_calibration_error(labels, probs),
        **counts, params={k: v for k, v in asdict(params).items()})
    atomic_write_json(sidecar(out, "metrics"), metrics.model_dump(mode="json"))
    return metrics


def _split(docs: list[str], holdout: float, rng: random.Random) -> dict[str, list[str]]:
    """Random split: (1 - holdout) to train, the held-out part halved into calibration and test."""
    docs = sorted(set(docs))  # exact copies would leak across the split
    rng.shuffle(docs)
    cut = max(2, round(len(docs) * holdout))
    return {"train": docs[cut:], "calibration": docs[:cut:2], "test": docs[1:cut:2]}


def train_texts(positive: list[str], negative: list[str], out: str | Path, *, holdout: float = 0.2,
                **params) -> ClassifierMetrics:
    """Train on a random (1 - holdout) split of each class; calibrate and measure on the rest."""
    if not positive or not negative:
        raise ValueError("need at least one positive and one negative document")
    p = TrainParams(**params)
    rng = random.Random(p.seed)
    return train_on_splits(_split(positive, holdout, rng), _split(negative, holdout, rng), out, p)


def train_classifier(positive: list[Path], negative: list[Path], out: Path, *,
                     text_column: str | None = None, **params) -> ClassifierMetrics:
    """`sluice quality train`: documents from the positive and negative files, then `train_texts`."""
    pos = [d for p in positive for d in read_documents(p, text_column)]
    neg = [d for p in negative for d in read_documents(p, text_column)]
    return train_texts(pos, neg, out, **params)


# ---------------------------------------------------------------------------------------------
# scoring


def _raw_scores(texts: list[str | None], ft, label: str) -> np.ndarray:
    """fastText's own probability of `label` (0 for empty texts or a label the model lacks)."""
    normalized = [normalize(t or "") for t in texts]
    present = [i for i, t in enumerate(normalized) if t]
    scores = np.zeros(len(texts), dtype=np.float64)
    if present:
        labels, probs = ft.predict([normalized[i] for i in present], k=-1)
        for i, lab, prob in zip(present, labels, probs):
            hit = np.flatnonzero(np.asarray(lab) == label)
            scores[i] = min(float(prob[hit[0]]), 1.0) if hit.size else 0.0
    return scores


def score_table(batch: pa.Table, cfg: ClassifierConfig) -> pa.Array:
    """The `quality_score` column of a batch: calibrated scores for documents whose `lang` is in
    `cfg.languages` (every document when that is null or the batch has no `lang`), null for the rest,
    which a stage passes on unjudged like the rules do (an English model says nothing about German)."""
    texts = batch["text"].to_pylist()
    if cfg.languages is None or "lang" not in batch.column_names:
        return pa.array(score(texts, cfg.model, cfg.label), pa.float64())
    wanted = set(cfg.languages)
    judged = [i for i, lang in enumerate(batch["lang"].to_pylist()) if lang in wanted]
    values: list[float | None] = [None] * len(texts)
    for i, s in zip(judged, score([texts[i] for i in judged], cfg.model, cfg.label)):
        values[i] = float(s)
    return pa.array(values, pa.float64())


def score(texts: list[str | None], model: str | Path | None = None, label: str = POSITIVE) -> np.ndarray:
    """Calibrated probability of `label` for each text (0 for empty texts); `model` None: the shipped
    model. With a two-label model the other label scores 1 - p; a model without a calibration file
    scores raw fastText probabilities."""
    path = str(model_path(model))
    ft = load_fasttext(path)
    calibration = load_calibration(path)
    if calibration is None:
        return _raw_scores(texts, ft, label)
    if label != calibration.label and len(ft.get_labels()) != 2:
        return _raw_scores(texts, ft, label)
    calibrated = calibration.apply(_raw_scores(texts, ft, calibration.label))
    scores = calibrated if label == calibration.label else 1.0 - calibrated
    scores[[not (t or "").strip() for t in texts]] = 0.0
    return scores
