"""The data-quality report, built from a real small run (exact dedup, language ID, rules, classifier
over Common Crawl pages, SMS messages, YouTube comments and WikiText-2), opened in headless Chromium
with the network disabled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import ClassifierConfig, LangIdConfig, RulesConfig
from pipeline.ledger import StageCount, StageResult, count_reasons, rejected_rows
from pipeline.manifest import ShardEntry, ShardManifest, TokenizerInfo, write_manifest
from pipeline.schema import DOC_SCHEMA
from pipeline.summary import build_summary
from browser import chromium, external_references, screenshot
from quality import classifier, langid, report
from stages import exact_dedup
from stages import langid as langid_stage
from stages import quality as quality_stage
from stages import rules as rules_stage

from test_quality import cc_docs, sms, wiki_paragraphs, youtube

SECTIONS = ["Funnel", "Rejections by reason", "Language distribution", "Document length", "Quality score",
            "Removal by label", "Duplicate clusters", "Tokens per shard", "Sample rejected documents"]
ANNOTATIONS = {"lang": pa.string(), "lang_score": pa.float64(), "quality_score": pa.float64()}


def _table(rows: list[tuple[str, str]], source: str, label: str) -> pa.Table:
    """Documents as readers make them; `meta.label` says how each was made (as in the demo corpus)."""
    return pa.Table.from_pydict({
        "id": [i for i, _ in rows], "text": [t for _, t in rows], "source": [source] * len(rows),
        "url": [None] * len(rows), "meta": [json.dumps({"label": label})] * len(rows),
        "origin": [None] * len(rows)}, schema=DOC_SCHEMA)


def _annotated(rows: pa.Table, scored: pa.Table) -> pa.Table:
    """Rows with the typed annotation columns the core carries on kept and rejected rows: the
    values `scored` has for the same ids, null where it has none."""
    index = {doc_id: i for i, doc_id in enumerate(scored["id"].to_pylist())}
    for name, typ in ANNOTATIONS.items():
        if name in rows.column_names:
            continue
        values = scored[name].to_pylist() if name in scored.column_names else [None] * scored.num_rows
        rows = rows.append_column(pa.field(name, typ), pa.array([values[index[i]] if i in index else None
                                                                 for i in rows["id"].to_pylist()], typ))
    return rows


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _token_shards(run: Path, kept: pa.Table, tokenizer_json: Path, shards: int = 4) -> None:
    """A shard manifest with real token counts of the kept documents (the shard stage's format)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    counts = [len(e.ids) for e in tok.encode_batch(kept["text"].to_pylist())]
    entries = [ShardEntry(file=f"shard-{i:05d}.arrow", version=1, docs=len(counts[i::shards]),
                          tokens=int(sum(counts[i::shards])), bytes=0, dtype="uint16", sha256="", sources={})
               for i in range(shards)]
    tokenizer = TokenizerInfo(file="tokenizer.json", sha256="", vocab_size=tok.get_vocab_size(), eod_token=None,
                              eod_id=None, trained=False)
    write_manifest(run / "shards", ShardManifest.first(entries, fingerprint="report-test", config_hash="",
                                                       tokenizer=tokenizer, dtype="uint16"))


@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    inputs = pa.concat_tables([
        _table([(d["id"], d["text"]) for d in cc_docs(shared_data)[:250]], "cc-web-docs", "web"),
        _table([(f"sms-{i}", t) for i, (_, t) in enumerate(sms(shared_data)[:300])], "sms-spam", "spam"),
        _table([(r["COMMENT_ID"], r["CONTENT"]) for r in youtube(shared_data)[:60]], "youtube-spam", "spam"),
        _table([(f"wiki-{i}", t) for i, t in enumerate(wiki_paragraphs(shared_data)[:80])], "wikitext-2", "clean"),
    ])
    negative = [t for label, t in sms(shared_data)[300:] if label == "spam"]
    negative += [r["CONTENT"] for r in youtube(shared_data)[60:] if r["CLASS"] == "1"]
    model = run.parent / f"{run.name}-quality.bin"
    classifier.train_texts(wiki_paragraphs(shared_data)[80:], negative, model, epoch=5, dim=32)
    lid = str(shared_data / "fasttext-lid" / "lid.176.ftz")
    quality_cfg = ClassifierConfig(model=str(model), threshold=0.5)

    def with_lang(t: pa.Table) -> pa.Table:
        langs, scores = langid.predict(t["text"].to_pylist(), lid)
        return t.append_column("lang", pa.array(langs)).append_column("lang_score", pa.array(scores))

    # (stage, function, what the stage computes for every row it sees: the new core's typed columns)
    steps = [
        ("exact_dedup", exact_duplicates, lambda t: t),
        ("langid", lambda t: langid_stage.process(t, LangIdConfig(model=lid, allow=["en"], min_score=0.4)), with_lang),
        ("rules", lambda t: rules_stage.process(t, RulesConfig(disable=["gopher.word_count", "c4.min_sentences"])),
         lambda t: t),
        ("quality", lambda t: quality_stage.process(t, quality_cfg),
         lambda t: t.append_column("quality_score", classifier.score_table(t, quality_cfg))),
    ]
    counts, table = [], inputs
    for name, fn, annotate in steps:
        result: StageResult = fn(table)
        counts.append(StageCount.of(name, table.num_rows, result.kept.num_rows, count_reasons(result.rejected["reason"])))
        _write(run / "rejected" / f"{name}-part-00000.parquet", _annotated(result.rejected, annotate(table)))
        table = result.kept
    _write(run / "kept" / "part-00000.parquet", _annotated(table, table))
    (run / "summary.json").write_text(build_summary(counts).to_json())
    _token_shards(run, table, shared_data / "tokenizers" / "dolma_gpt-neo-test-tokenizer.json")
    return run


def exact_duplicates(table: pa.Table) -> StageResult:
    """Exact dedup's decisions applied to one table, as the runner applies them to a piece."""
    rows = pa.array(range(table.num_rows), pa.int32())
    d = exact_dedup.process(table.append_column("_piece", pa.array([0] * table.num_rows, pa.int32()))
                            .append_column("_row", rows)).decisions
    return StageResult(kept=table.filter(pc.invert(pc.is_in(rows, d["_row"]))),
                       rejected=rejected_rows(table.take(d["_row"]), "exact_dedup", d["reason"], d["detail"],
                                              d["duplicate_of"], d["cluster_id"], d["duplicate_of_source"]))


def test_report_is_one_offline_file_with_every_section(run_dir):
    page = report.write_report(run_dir)
    html = page.read_text()
    assert page == run_dir / "report.html"
    assert external_references(html) == []
    assert "<script" not in html and "<img" not in html  # plots are inline SVG, nothing to load
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert html.count("<svg") == 7
    assert "keeper policy (dedup.keep): first" in html  # this run records no dedup.keep
    assert report.WHY_SVG in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['inputs']:,}" in html and summary["rejected"] > 0


def test_report_escapes_sample_documents(run_dir):
    html = report.write_report(run_dir).read_text()
    samples = report.load_run(run_dir).samples
    assert samples and all(1 <= len(docs) <= report.SAMPLES_PER_REASON for docs in samples.values())
    markup = [d["text"] for docs in samples.values() for d in docs if "<" in d["text"][:report.SAMPLE_CHARS]]
    assert markup, "the sample should include a page with markup in its text"
    for text in markup:
        raw = text[:report.SAMPLE_CHARS]
        assert report._e(raw) in html
        assert raw not in html


def test_report_is_deterministic(run_dir):
    first = report.write_report(run_dir).read_bytes()
    assert report.write_report(run_dir).read_bytes() == first


def test_headline_markdown(run_dir):
    md = report.headline_markdown(run_dir)
    summary = report.load_run(run_dir).summary
    assert f"| {summary.inputs:,} | {summary.kept:,} | {summary.rejected:,} |" in md
    top_reason, top_count = report.rejection_counts(summary)[0]
    assert f"| {top_reason} | {top_count:,} |" in md
    assert str((run_dir / "report.html").resolve()) in md


def page_requests(net_log: Path) -> list[str]:
    """URLs a page asked the network for. Chromium's own background requests carry the initiator
    "not an origin"; a file:// page's requests carry "null"."""
    text = net_log.read_text().rstrip()
    if not text.endswith("}"):  # Chromium may leave the event list unterminated
        text = text.rstrip(",") + "]}"
    events = json.loads(text).get("events", [])
    return sorted({p["url"] for e in events if (p := e.get("params", {})).get("initiator", "not an origin")
                   != "not an origin" and "url" in p})


def test_report_reads_typed_columns_and_the_manifest(run_dir):
    data = report.load_run(run_dir)
    kept_rows, rejected_rows = (pl.read_parquet(run_dir / side / "*.parquet") for side in ("kept", "rejected"))
    langs = dict((lang, (kept, rejected)) for lang, kept, rejected in report.language_counts(data))
    assert langs["en"][0] == data.kept.docs == kept_rows.height  # allow: [en]
    by_langid = rejected_rows.filter(pl.col("reason") == "language")["lang"].value_counts()
    by_langid = dict(zip(by_langid["lang"].to_list(), by_langid["count"].to_list()))
    assert len(by_langid) > 3 and all(rejected == by_langid.get(lang, 0) for lang, (_, rejected) in langs.items())
    assert data.shard_tokens[0][0] == "shard-00000.arrow" and sum(t for _, t in data.shard_tokens) > 0
    low = rejected_rows.filter(pl.col("reason") == "low_quality")
    assert low.height and low["quality_score"].null_count() == 0 and low["quality_score"].max() < 0.5
    below_half = int(np.searchsorted(report.SCORE_BINS, 0.5))  # the bins of [0, 0.5)
    assert data.kept.scores[:below_half].sum() == 0 and data.kept.scores.sum() == kept_rows.height
    assert data.rejected.scores.sum() == rejected_rows["quality_score"].drop_nulls().len()
    assert abs(data.kept.median_lang_score() - kept_rows["lang_score"].median()) <= 0.001
    assert data.kept.lengths.sum() == kept_rows.height and data.rejected.docs == rejected_rows.height
    keeper = pl.struct("duplicate_of_source", "duplicate_of").struct.json_encode()
    clusters = rejected_rows.select(pl.coalesce("cluster_id", pl.when(pl.col("duplicate_of").is_not_null())
                                                .then(keeper))).to_series()
    assert data.cluster_sizes.tolist() == sorted((clusters.drop_nulls().value_counts()["count"] + 1).to_list())
    assert data.cluster_sizes.size > 0


def test_exact_duplicates_of_two_sources_sharing_a_keeper_id_are_two_clusters(tmp_path):
    """A cluster without a fuzzy cluster id is its keeper's (source, id), never the bare id."""
    rows = [{"id": f"copy-{i}", "source": src, "text": "same", "stage": "exact_dedup", "reason": "exact_duplicate",
             "duplicate_of": "doc-1", "duplicate_of_source": src} for i, src in enumerate(["a", "a", "b"])]
    (tmp_path / "rejected").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rejected" / "part-00000.parquet")
    sizes, samples = report._tally_rejected(tmp_path / "rejected", report.Tally())
    assert sizes.tolist() == [2, 3]  # source a: two copies + its keeper; source b: one copy + its keeper
    assert [d["id"] for d in samples["exact_dedup: exact_duplicate"]] == ["copy-0", "copy-1", "copy-2"]


def test_removal_by_label(run_dir):
    """SMS and YouTube spam against WikiText-2: the spam label is mostly removed, clean mostly kept."""
    data = report.load_run(run_dir)
    removal = {r.label: r for r in report.label_removal(data.kept, data.rejected)}
    assert list(removal) == ["clean", "spam", "web"]
    assert removal["spam"].docs == 360 and removal["spam"].recall > 0.9
    assert removal["spam"].precision > 0.9 and removal["clean"].precision is None
    assert removal["clean"].recall < 0.5  # most clean paragraphs kept
    assert removal["spam"].top_reasons[0][1] >= removal["spam"].top_reasons[-1][1]


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (CI installs it in .ci/run)")
def test_report_renders_in_headless_chromium_without_network(run_dir, tmp_path):
    from PIL import Image

    page = report.write_report(run_dir)
    png, net_log = tmp_path / "report.png", tmp_path / "net.json"
    screenshot(page, png, width=1200, height=2400, net_log=net_log)
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape[:2] == (2400, 1200)
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, bars, histograms: far from a blank page

    def has_colour(hex_colour: str) -> bool:
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        return bool((np.abs(image.astype(int) - rgb).sum(axis=2) < 12).sum() > 500)

    assert has_colour(report.ACCENT) and has_colour(report.REJECTED_COLOR)  # the plots were drawn
    assert page_requests(net_log) == []
    # the same check does see a page that fetches from the network
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="https://example.com/x.png"></body></html>')
    screenshot(control, tmp_path / "control.png", width=200, height=100, net_log=tmp_path / "control.json")
    assert page_requests(tmp_path / "control.json") == ["https://example.com/x.png"]
