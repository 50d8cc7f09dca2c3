"""The data-quality report: one self-contained HTML file per run (`RUN/report.html`).

Figures are drawn with matplotlib and embedded as inline SVG. Static vector images need no
JavaScript, no CDN and no network fetch, stay sharp at any zoom, and keep the report a single file
that opens offline and diffs as text; interactive plotting libraries (Plotly, Bokeh, Vega) would
have to inline megabytes of JavaScript or fetch it from a CDN. matplotlib is already a dependency.
"""
from __future__ import annotations

import html
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from pipeline.manifest import MANIFEST, read_manifest
from pipeline.rundir import RunDir, atomic_write_bytes, safe_join
from pipeline.summary import RunSummary, load_summary

if TYPE_CHECKING:  # matplotlib itself is imported when a figure is drawn: ~25 MB the run's driver
    from matplotlib.figure import Figure  # would otherwise carry from its first import on

KEPT_COLOR, REJECTED_COLOR, ACCENT = "#2a9d8f", "#e76f51", "#264653"
SAMPLES_PER_REASON = 3
SAMPLE_CHARS = 600
TOP_LANGUAGES = 15
TOP_REASONS = 25
CLEAN_LABEL = "clean"  # the label of documents made to be kept (pipeline/democorpus.py LABELS)
DEFAULT_KEEP = "first"  # dedup's keeper policy when the run does not record one
WHY_SVG = ("Figures are matplotlib charts embedded as inline SVG: static vector images need no "
           "JavaScript, CDN or network access, stay sharp at any zoom, and keep this report one "
           "self-contained file that opens offline.")


# Fixed bins, so the counts of every file add up: lengths at 8 bins per decade from 1 to 10^8
# characters, scores at 40 bins over [0, 1], language-ID scores at 1,000 (for their median).
LENGTH_BINS = np.logspace(0, 8, 65)
SCORE_BINS = np.linspace(0, 1, 41)
MEDIAN_BINS = np.linspace(0, 1, 1001)


def _histogram_counts(values: pl.Series, bins: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(values.drop_nulls().to_numpy(), bins[0], bins[-1]), bins)[0]


def _value_counts(values: pl.Series) -> Counter:
    counts = values.drop_nulls().value_counts()
    return Counter(dict(zip(counts[values.name].to_list(), counts["count"].to_list())))


@dataclass
class Tally:
    """Counts over the kept or the rejected rows of a run, added up file by file: the report holds
    counts, never a row per document, so its memory does not grow with the run."""

    docs: int = 0
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(len(LENGTH_BINS) - 1, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(len(SCORE_BINS) - 1, np.int64))
    lang_scores: np.ndarray = field(default_factory=lambda: np.zeros(len(MEDIAN_BINS) - 1, np.int64))
    langs: Counter = field(default_factory=Counter)  # kept: every row; rejected: rows rejected by language ID
    labels: Counter = field(default_factory=Counter)
    label_reasons: Counter = field(default_factory=Counter)  # (label, reason) of labelled rejected rows

    def add(self, rows: pl.DataFrame) -> None:
        self.docs += rows.height
        self.lengths += _histogram_counts(rows["length"], LENGTH_BINS)
        self.scores += _histogram_counts(rows["quality_score"], SCORE_BINS)
        self.lang_scores += _histogram_counts(rows["lang_score"], MEDIAN_BINS)
        rejected = "reason" in rows.columns
        self.langs += _value_counts((rows.filter(pl.col("reason") == "language") if rejected else rows)["lang"])
        self.labels += _value_counts(rows["label"])
        if rejected:
            pairs = rows.filter(pl.col("label").is_not_null()).group_by(["label", "reason"]).len()
            self.label_reasons += Counter({(lab, why): n for lab, why, n in pairs.iter_rows()})

    def median_lang_score(self) -> float | None:
        """The median language-ID score, to the nearest 0.001 (the middle of its bin)."""
        total = int(self.lang_scores.sum())
        if not total:
            return None
        i = int(np.searchsorted(np.cumsum(self.lang_scores), (total + 1) / 2))
        return float((MEDIAN_BINS[i] + MEDIAN_BINS[i + 1]) / 2)


@dataclass
class RunData:
    """What the report reads from a run directory: counts, cluster sizes and a few sample rows."""

    root: Path
    summary: RunSummary
    kept: Tally
    rejected: Tally
    cluster_sizes: np.ndarray  # documents per duplicate cluster
    samples: dict[str, list[dict]]  # per `stage: reason`, the first SAMPLES_PER_REASON rejected rows by id
    shard_tokens: list[tuple[str, int]]
    keep_policy: str


# Typed annotation columns carried on kept and rejected rows (null where the stage did not run).
ANNOTATIONS = {"lang": pl.String, "lang_score": pl.Float64, "quality_score": pl.Float64}
LEDGER = {c: pl.String for c in ("id", "source", "stage", "reason", "detail", "duplicate_of", "duplicate_of_source",
                                  "cluster_id")}


def _read(path: Path, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """These columns of one Parquet file (null where it lacks one), each text's `length`, the input's
    `label` (meta.label, as the demo corpus and the curation benchmark write it) and the row number."""
    present = pl.read_parquet_schema(path)
    cols = [pl.col(c).cast(t) if c in present else pl.lit(None, t).alias(c) for c, t in columns.items()]
    cols.append(pl.col("text").str.len_chars().cast(pl.Int64).alias("length") if "text" in present
                else pl.lit(None, pl.Int64).alias("length"))
    cols.append(pl.col("meta").str.json_path_match("$.label").alias("label") if "meta" in present
                else pl.lit(None, pl.String).alias("label"))
    return pl.scan_parquet(path).select(cols).with_row_index("_row").collect()


def _first_per_reason(rows: pl.DataFrame) -> pl.DataFrame:
    """The first SAMPLES_PER_REASON rows by id of each (stage, reason): of every file, then of those."""
    ordered = rows.sort(["stage", "reason", "id"], maintain_order=True)
    return ordered.group_by(["stage", "reason"], maintain_order=True).head(SAMPLES_PER_REASON)


def _with_texts(picked: pl.DataFrame) -> dict[str, list[dict]]:
    """The picked rows by `stage: reason`, each with its text, read from its own file."""
    texts: dict[tuple[str, int], str | None] = {}
    for (path,), rows in picked.group_by("_file", maintain_order=True):
        found = pl.scan_parquet(path).with_row_index("_row").filter(pl.col("_row").is_in(rows["_row"].implode())) \
            .select("_row", "text").collect()
        texts.update(((path, r), text) for r, text in found.iter_rows())
    out: dict[str, list[dict]] = {}
    for row in picked.iter_rows(named=True):
        out.setdefault(f"{row['stage']}: {row['reason']}", []).append(
            {**row, "text": texts[(row["_file"], row["_row"])] or ""})
    return out


def _tally_rejected(folder: Path, tally: Tally) -> tuple[np.ndarray, dict[str, list[dict]]]:
    """Add the rejected rows to `tally`, file by file; return the cluster sizes and the samples."""
    clusters, firsts = [], []
    # a duplicate's cluster: fuzzy dedup's cluster id, else its keeper's identity (source, id)
    keeper = pl.concat_str([pl.lit("="), pl.col("duplicate_of_source").fill_null(""), pl.lit("\x00"),
                            pl.col("duplicate_of")])
    key = pl.coalesce(pl.col("cluster_id"), keeper).alias("cluster")
    for path in sorted(folder.glob("*.parquet")):
        rows = _read(path, {**LEDGER, **ANNOTATIONS})
        tally.add(rows)
        clusters.append(rows.select(key).drop_nulls().group_by("cluster").len())
        firsts.append(_first_per_reason(rows).with_columns(_file=pl.lit(str(path))))
    sizes = pl.concat(clusters).group_by("cluster").agg(pl.col("len").sum())["len"].to_numpy() + 1 \
        if clusters else np.array([], dtype=int)
    picked = _first_per_reason(pl.concat(firsts)) if firsts else None
    return np.sort(sizes), (_with_texts(picked) if picked is not None and picked.height else {})


def _shard_tokens(run: Path) -> list[tuple[str, int]]:
    """(file name, tokens) per shard of the run's manifest; each path is checked to stay in the run."""
    shards = RunDir(run).shards
    if not (shards / MANIFEST).is_file():
        return []
    out = []
    for entry in read_manifest(shards).shards:
        safe_join(shards, entry.file)
        out.append((Path(entry.file).name, entry.tokens))
    return out


def keep_policy(run: Path) -> str:
    """dedup's keeper policy (`dedup.keep`) as the run recorded its config, else "first"."""
    config = RunDir(run).config_file
    if config.is_file():
        return str(json.loads(config.read_text()).get("dedup", {}).get("keep") or DEFAULT_KEEP)
    return DEFAULT_KEEP


def load_run(run_dir: str | Path) -> RunData:
    run = Path(run_dir)
    try:
        summary = load_summary(run)
    except FileNotFoundError:
        raise FileNotFoundError(f"{run / 'summary.json'} not found: is {run} a finished curate run?") from None
    kept, rejected = Tally(), Tally()
    for path in sorted((run / "kept").glob("*.parquet")):
        kept.add(_read(path, ANNOTATIONS))
    sizes, picked = _tally_rejected(run / "rejected", rejected)
    return RunData(run, summary, kept, rejected, sizes, picked, _shard_tokens(run), keep_policy(run))


# ---------------------------------------------------------------------------------------------
# figures


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an inline <svg> element, byte-identical for identical data."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": f"sluice-{salt}", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and DOCTYPE, invalid inside HTML


def _figure(height: float = 3.2) -> tuple[Figure, object]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, height), dpi=100)
    ax = fig.subplots()
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _hbar(labels: list[str], values: list[int], title: str, color: str, salt: str) -> str:
    fig, ax = _figure(max(2.0, 0.32 * len(labels) + 1))
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=color)
    ax.set_yticks(y, labels)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    ax.set_title(title, loc="left")
    ax.margins(x=0.15)
    return _svg(fig, salt)


def funnel_figure(summary: RunSummary) -> str:
    labels = ["inputs"] + [s.stage for s in summary.stages]
    values = [summary.inputs] + [s.kept for s in summary.stages]
    return _hbar(labels, values, "Documents left after each stage", ACCENT, "funnel")


def reasons_figure(reasons: list[tuple[str, int]]) -> str:
    return _hbar([r for r, _ in reasons], [n for _, n in reasons], "Rejections by reason", REJECTED_COLOR, "reasons")


def _histogram(kept: np.ndarray, rejected: np.ndarray, bins: np.ndarray, title: str, xlabel: str,
               salt: str, log_x: bool = False) -> str:
    """Kept and rejected counts per bin, drawn over the bins from the first to the last one used."""
    used = np.flatnonzero(kept + rejected)
    lo, hi = (int(used[0]), int(used[-1]) + 1) if used.size else (0, len(bins) - 1)
    fig, ax = _figure()
    for counts, color, label in ((kept, KEPT_COLOR, "kept"), (rejected, REJECTED_COLOR, "rejected")):
        if counts.sum():
            ax.stairs(counts[lo:hi], bins[lo:hi + 1], fill=True, color=color, alpha=0.55,
                      label=f"{label} ({int(counts.sum()):,})")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("documents")
    ax.set_title(title, loc="left")
    ax.legend(frameon=False)
    return _svg(fig, salt)


def length_figure(kept: Tally, rejected: Tally) -> str:
    return _histogram(kept.lengths, rejected.lengths, LENGTH_BINS, "Document length", "characters (log scale)",
                      "length", log_x=True)


def quality_figure(kept: Tally, rejected: Tally) -> str:
    return _histogram(kept.scores, rejected.scores, SCORE_BINS, "Quality classifier score", "score", "quality")


def language_figure(langs: list[tuple[str, int, int]]) -> str:
    fig, ax = _figure(max(2.0, 0.3 * len(langs) + 1))
    y = np.arange(len(langs))[::-1]
    kept = np.array([k for _, k, _ in langs])
    rejected = np.array([r for _, _, r in langs])
    ax.barh(y, kept, color=KEPT_COLOR, label="kept")
    ax.barh(y, rejected, left=kept, color=REJECTED_COLOR, label="rejected by language ID")
    ax.set_yticks(y, [lang for lang, _, _ in langs])
    ax.set_title("Languages", loc="left")
    ax.legend(frameon=False)
    return _svg(fig, "langs")


def cluster_figure(sizes: np.ndarray) -> str:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    values, counts = np.unique(sizes, return_counts=True)
    ax.bar(values.astype(str), counts, color=ACCENT)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("documents per duplicate cluster")
    ax.set_ylabel("clusters")
    ax.set_title("Duplicate clusters", loc="left")
    return _svg(fig, "clusters")


def shards_figure(shards: list[tuple[str, int]]) -> str:
    fig, ax = _figure()
    ax.bar(range(len(shards)), [t for _, t in shards], color=ACCENT)
    ax.set_xticks(range(len(shards)), [n for n, _ in shards], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("tokens")
    ax.set_title(f"Tokens per shard (total {sum(t for _, t in shards):,})", loc="left")
    return _svg(fig, "shards")


# ---------------------------------------------------------------------------------------------
# data for the sections


def rejection_counts(summary: RunSummary) -> list[tuple[str, int]]:
    """`stage: reason` and count, largest first (ties by name, so the order is stable)."""
    rows = [(f"{s.stage}: {reason}", n) for s in summary.stages for reason, n in s.rejected_by_reason.items()]
    return sorted(rows, key=lambda r: (-r[1], r[0]))


def language_counts(data: RunData) -> list[tuple[str, int, int]]:
    """(language, kept, rejected by language ID) for the most frequent languages."""
    kept, rejected = data.kept.langs, data.rejected.langs
    langs = sorted(kept.keys() | rejected.keys(), key=lambda x: (-(kept.get(x, 0) + rejected.get(x, 0)), x))
    return [(x, kept.get(x, 0), rejected.get(x, 0)) for x in langs[:TOP_LANGUAGES]]


@dataclass
class LabelRemoval:
    """How the run treated the documents made as one kind (`label`).

    recall: share of the label's documents removed. precision: removals of this label among the
    removals of this label and of clean documents, i.e. the precision of "remove" on the sub-problem
    of telling this label from clean text (for the clean label itself: the share kept)."""

    label: str
    docs: int
    removed: int
    top_reasons: list[tuple[str, int]]
    precision: float | None
    recall: float


def label_removal(kept: Tally, rejected: Tally) -> list[LabelRemoval]:
    """Per-label removal figures from the kept rows' labels and the rejected rows' label + reason;
    empty when no row carries a label."""
    removed = rejected.labels
    clean_removed = removed.get(CLEAN_LABEL, 0)
    out = []
    for label in sorted(kept.labels.keys() | removed.keys(), key=lambda x: (x != CLEAN_LABEL, x)):
        n_removed, docs = removed.get(label, 0), kept.labels.get(label, 0) + removed.get(label, 0)
        reasons = sorted(((why, n) for (lab, why), n in rejected.label_reasons.items() if lab == label),
                         key=lambda r: (-r[1], r[0]))
        precision = (n_removed / (n_removed + clean_removed) if n_removed + clean_removed else None) \
            if label != CLEAN_LABEL else None
        out.append(LabelRemoval(label, docs, n_removed, reasons[:3], precision, n_removed / docs if docs else 0.0))
    return out


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2b33;background:#f6f7f8}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin:32px 0 8px;border-bottom:2px solid #e2e6e9;padding-bottom:4px}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border-radius:8px;padding:12px 18px;
box-shadow:0 1px 3px #0002}.card b{display:block;font-size:24px}
figure{background:#fff;border-radius:8px;padding:8px;margin:12px 0;box-shadow:0 1px 3px #0002}
figure svg{max-width:100%;height:auto}
table{border-collapse:collapse;background:#fff;margin:8px 0}td,th{padding:4px 10px;border-bottom:1px solid #e2e6e9;
text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
details{background:#fff;border-radius:8px;margin:8px 0;padding:8px 12px;box-shadow:0 1px 3px #0002}
summary{cursor:pointer;font-weight:600}pre{white-space:pre-wrap;word-break:break-word;background:#f1f3f5;
padding:8px;border-radius:6px;font-size:12px}.meta{color:#5b6b75;font-size:12px}.note{color:#5b6b75}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="n">{v:,}</td>' if i in numeric and isinstance(v, int) else f"<td>{_e(v)}</td>"
        for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{''.join(parts)}</section>"


def _fig(svg: str) -> str:
    return f"<figure>{svg}</figure>"


def _samples_html(by_reason: dict[str, list[dict]]) -> str:
    blocks = []
    for reason, docs in by_reason.items():
        items = "".join(
            f'<p class="meta">{_e(d["id"])} · {_e(d["source"])} · {_e(d["detail"])}</p>'
            f"<pre>{_e((d['text'] or '')[:SAMPLE_CHARS])}{'…' if len(d['text'] or '') > SAMPLE_CHARS else ''}</pre>"
            for d in docs)
        blocks.append(f"<details><summary>{_e(reason)} ({len(docs)} shown)</summary>{items}</details>")
    return "".join(blocks) or '<p class="note">No rejected documents.</p>'


def render_html(data: RunData, title: str) -> str:
    s = data.summary
    reasons = rejection_counts(s)
    kept_share = s.kept / s.inputs if s.inputs else 0.0
    cards = "".join(f'<div class="card">{_e(k)}<b>{v}</b></div>' for k, v in (
        ("input documents", f"{s.inputs:,}"), ("kept", f"{s.kept:,}"),
        ("rejected", f"{s.rejected:,}"), ("kept share", f"{kept_share:.1%}"),
        ("duplicate keeper", data.keep_policy)))
    parts = [
        _section("Funnel", _fig(funnel_figure(s)), _table(
            ["stage", "in", "kept", "rejected"],
            [[st.stage, st.inputs, st.kept, st.rejected] for st in s.stages], {1, 2, 3})),
        _section("Rejections by reason",
                 _fig(reasons_figure(reasons[:TOP_REASONS])) if reasons else '<p class="note">None.</p>',
                 "<details><summary>as a table</summary>"
                 f'{_table(["stage: reason", "documents"], [list(r) for r in reasons], {1})}</details>'),
    ]
    langs = language_counts(data)
    if langs:
        median = data.kept.median_lang_score()
        note = f'<p class="note">Median language-ID score of kept documents: {median:.3f}.</p>' \
            if median is not None else ""
        parts.append(_section("Language distribution", _fig(language_figure(langs)), note))
    parts.append(_section("Document length", _fig(length_figure(data.kept, data.rejected))))
    if data.kept.scores.sum() or data.rejected.scores.sum():
        parts.append(_section("Quality score", _fig(quality_figure(data.kept, data.rejected)), (
            '<p class="note">Calibrated probability of high quality (quality/models/MODEL_CARD.md); '
            "rejected: every rejected document that was scored, whatever rejected it.</p>")))
    removal = label_removal(data.kept, data.rejected)
    if removal:
        parts.append(_section("Removal by label", _table(
            ["label", "documents", "removed", "recall (removed share)", "precision vs clean", "top reasons"],
            [[r.label, r.docs, r.removed, f"{r.recall:.1%}", "-" if r.precision is None else f"{r.precision:.1%}",
              ", ".join(f"{reason} {n:,}" for reason, n in r.top_reasons)] for r in removal], {1, 2}),
            '<p class="note">Labels say how each input document was made (meta.label). Precision of a junk '
            "label: its removals among its own and the clean documents' removals.</p>"))
    sizes = data.cluster_sizes
    if sizes.size:
        parts.append(_section("Duplicate clusters", _fig(cluster_figure(sizes)),
                              f'<p class="note">{sizes.size:,} clusters, largest {int(sizes.max()):,} documents; '
                              f"keeper policy (dedup.keep): {_e(data.keep_policy)}.</p>"))
    if data.shard_tokens:
        parts.append(_section("Tokens per shard", _fig(shards_figure(data.shard_tokens))))
    parts.append(_section("Sample rejected documents", _samples_html(data.samples)))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><main><h1>Data-quality report</h1>"
            f'<p class="note">{_e(title)}</p><div class="cards">{cards}</div>{"".join(parts)}'
            f'<footer><p class="note">{_e(WHY_SVG)}</p></footer></main></body></html>\n')


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (atomically) and return its path."""
    run = Path(run_dir)
    out = run / "report.html"
    atomic_write_bytes(out, render_html(load_run(run), f"Run {run.resolve().name}").encode())
    return out


def headline_markdown(run_dir: str | Path) -> str:
    """The report's headline for a Prefect artifact: totals, top reasons, top languages, the report path."""
    run = Path(run_dir)
    data = load_run(run)
    s = data.summary
    share = s.kept / s.inputs if s.inputs else 0.0
    lines = ["| inputs | kept | rejected | kept share |", "|---:|---:|---:|---:|",
             f"| {s.inputs:,} | {s.kept:,} | {s.rejected:,} | {share:.1%} |", "",
             "| top rejection reasons | documents |", "|---|---:|"]
    lines += [f"| {reason} | {n:,} |" for reason, n in rejection_counts(s)[:5]] or ["| none | 0 |"]
    langs = language_counts(data)[:5]
    if langs:
        lines += ["", "Languages kept: " + ", ".join(f"{lang} {k:,}" for lang, k, _ in langs)]
    lines += ["", f"Report: `{(run / 'report.html').resolve()}`"]
    return "\n".join(lines)
