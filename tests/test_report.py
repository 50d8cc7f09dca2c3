"""The data-quality report, built from a real small run (exact dedup, language ID, rules, classifier
over Common Crawl pages, SMS messages, YouTube comments and WikiText-2), opened in headless Chromium
with the network disabled."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import ClassifierConfig, LangIdConfig, RulesConfig
from pipeline.ledger import StageCount, StageResult, count_reasons, rejected_rows
from pipeline.schema import DOC_SCHEMA
from pipeline.summary import build_summary
from quality import classifier, report
from stages import exact_dedup
from stages import langid as langid_stage
from stages import quality as quality_stage
from stages import rules as rules_stage

from test_quality import cc_docs, sms, wiki_paragraphs, youtube

SECTIONS = ["Funnel", "Rejections by reason", "Language distribution", "Document length", "Quality score",
            "Duplicate clusters", "Tokens per shard", "Sample rejected documents"]


def _table(rows: list[tuple[str, str]], source: str) -> pa.Table:
    return pa.Table.from_pydict({
        "id": [i for i, _ in rows], "text": [t for _, t in rows], "source": [source] * len(rows),
        "url": [None] * len(rows), "meta": [None] * len(rows)}, schema=DOC_SCHEMA)


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _exact_dedup(table: pa.Table) -> StageResult:
    """Exact dedup's decisions (keyed by row) applied to one table, as the core's filter applies them."""
    rows = table.append_column("_piece", pa.array([0] * table.num_rows, pa.int32())).append_column(
        "_row", pa.array(range(table.num_rows), pa.int32()))
    decisions = exact_dedup.process(rows).decisions  # in row order
    hit = pc.is_in(rows["_row"], decisions["_row"])
    return StageResult(kept=table.filter(pc.invert(hit)),
                       rejected=rejected_rows(table.filter(hit), "exact_dedup", "exact_duplicate",
                                              duplicate_of=decisions["duplicate_of"]))


def _token_shards(run: Path, kept: pa.Table, tokenizer_json: Path, shards: int = 4) -> None:
    """A shard manifest with real token counts of the kept documents (the shard stage's format)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    counts = [len(e.ids) for e in tok.encode_batch(kept["text"].to_pylist())]
    manifest = {"shards": [{"path": f"shard-{i:05d}.arrow", "tokens": int(sum(counts[i::shards]))}
                           for i in range(shards)]}
    (run / "shards").mkdir(parents=True)
    (run / "shards" / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def run_dir(shared_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    inputs = pa.concat_tables([
        _table([(d["id"], d["text"]) for d in cc_docs(shared_data)[:250]], "cc-web-docs"),
        _table([(f"sms-{i}", t) for i, (_, t) in enumerate(sms(shared_data)[:300])], "sms-spam"),
        _table([(r["COMMENT_ID"], r["CONTENT"]) for r in youtube(shared_data)[:60]], "youtube-spam"),
        _table([(f"wiki-{i}", t) for i, t in enumerate(wiki_paragraphs(shared_data)[:80])], "wikitext-2"),
    ])
    negative = [t for label, t in sms(shared_data)[300:] if label == "spam"]
    negative += [r["CONTENT"] for r in youtube(shared_data)[60:] if r["CLASS"] == "1"]
    model = run.parent / f"{run.name}-quality.bin"
    classifier.train_texts(wiki_paragraphs(shared_data)[80:], negative, model, epoch=5, dim=32)
    steps = [
        ("exact_dedup", _exact_dedup),
        ("langid", lambda t: langid_stage.process(t, LangIdConfig(model=str(
            shared_data / "fasttext-lid" / "lid.176.ftz"), allow=["en"], min_score=0.4))),
        ("rules", lambda t: rules_stage.process(t, RulesConfig(disable=["gopher.word_count", "c4.min_sentences"]))),
        ("quality", lambda t: quality_stage.process(t, ClassifierConfig(enabled=True, model=str(model),
                                                                         threshold=0.5))),
    ]
    counts, table = [], inputs
    for name, fn in steps:
        result: StageResult = fn(table)
        counts.append(StageCount(name, table.num_rows, result.kept.num_rows, count_reasons(result.rejected["reason"])))
        _write(run / "rejected" / f"{name}-part-00000.parquet", result.rejected)
        table = result.kept
    _write(run / "kept" / "part-00000.parquet", table)
    (run / "summary.json").write_text(json.dumps(build_summary(counts)))
    _token_shards(run, table, shared_data / "tokenizers" / "dolma_gpt-neo-test-tokenizer.json")
    return run


def test_report_is_one_offline_file_with_every_section(run_dir):
    page = report.write_report(run_dir)
    html = page.read_text()
    assert page == run_dir / "report.html"
    assert report.external_references(html) == []
    assert "<script" not in html and "<img" not in html  # plots are inline SVG, nothing to load
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in html
    assert html.count("<svg") == 7
    assert report.WHY_SVG in html
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['inputs']:,}" in html and summary["rejected"] > 0


def test_report_escapes_sample_documents(run_dir):
    html = report.write_report(run_dir).read_text()
    samples = report.samples(report.load_run(run_dir))
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
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"| {summary['inputs']:,} | {summary['kept']:,} | {summary['rejected']:,} |" in md
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


@pytest.mark.skipif(report.chromium() is None, reason="chromium not installed (CI installs it in .ci/run)")
def test_report_renders_in_headless_chromium_without_network(run_dir, tmp_path):
    from PIL import Image

    page = report.write_report(run_dir)
    png, net_log = tmp_path / "report.png", tmp_path / "net.json"
    report.screenshot(page, png, width=1200, height=2400, net_log=net_log)
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
    report.screenshot(control, tmp_path / "control.png", width=200, height=100, net_log=tmp_path / "control.json")
    assert page_requests(tmp_path / "control.json") == ["https://example.com/x.png"]
