"""The demo corpus: deterministic bytes, files that standard libraries read, and ground truth that holds."""
from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import fasttext
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH
from warcio.archiveiterator import ArchiveIterator

from pipeline.config import parse_config
from pipeline.democorpus import CorpusInfo, generate_corpus, main

N_DOCS = 400
STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> CorpusInfo:
    return generate_corpus(tmp_path_factory.mktemp("corpus"), n_docs=N_DOCS, seed=7)


def file_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def read_jsonl(path: Path) -> tuple[list[dict], Counter]:
    """Valid records, and a tally of the lines that are not (by why)."""
    records, bad = [], Counter()
    for raw in gzip.decompress(path.read_bytes()).splitlines():
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            bad["invalid_utf8"] += 1
            continue
        except json.JSONDecodeError:
            bad["bad_json"] += 1
            continue
        if "text" not in rec:
            bad["no_text"] += 1
        else:
            records.append(rec)
    return records, bad


def texts_by_id(corpus: CorpusInfo) -> dict[str, str]:
    texts = {}
    for spec in corpus.inputs[:2]:
        texts.update({r["id"]: r["text"] for r in read_jsonl(Path(spec["path"]))[0]})
    forum = pq.read_table(corpus.inputs[2]["path"])
    texts.update({str(i): b for i, b in zip(forum["post_id"].to_pylist(), forum["body"].to_pylist())})
    return texts


def shingles(text: str) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(corpus, tmp_path):
    again = generate_corpus(tmp_path / "again", n_docs=N_DOCS, seed=7)
    other = generate_corpus(tmp_path / "other", n_docs=N_DOCS, seed=8)
    first = file_bytes(corpus.root)
    assert set(first) == {"web/part-0000.jsonl.gz", "web/part-0001.jsonl.gz", "forum/posts.parquet",
                          "crawl/crawl.warc.gz", "truth.json"}
    assert file_bytes(again.root) == first
    assert all(file_bytes(other.root)[name] != data for name, data in first.items())


def test_jsonl_parses_with_the_injected_defects(corpus):
    records, bad = [], Counter()
    for spec in corpus.inputs[:2]:
        recs, b = read_jsonl(Path(spec["path"]))
        records += recs
        bad += b
    assert bad == {"invalid_utf8": corpus.n_bad_bytes, "bad_json": 1, "no_text": 1}
    assert bad["bad_json"] + bad["no_text"] == corpus.n_malformed
    assert sum(not r["text"] for r in records) == 1
    assert len(records) + sum(bad.values()) == corpus.source_counts["web"]
    assert {"id", "text", "url", "date", "domain"} <= set(records[0])


def test_the_bad_bytes_line_is_cp1252(corpus):
    raw = gzip.decompress(Path(corpus.inputs[1]["path"]).read_bytes()).splitlines()
    undecodable = [line for line in raw if not _is_utf8(line)]
    rec = json.loads(undecodable[0].decode("cp1252"))
    assert "café" in rec["text"] and corpus.kinds[rec["id"]] == "bad_bytes"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_forum_parquet_has_the_mapped_columns(corpus):
    table = pq.read_table(corpus.inputs[2]["path"])
    assert table.column_names == ["post_id", "body", "url", "author", "label"]
    assert str(table.schema.field("post_id").type) == "int64"
    assert table.num_rows == corpus.source_counts["forum"]
    assert len(set(table["post_id"].to_pylist())) == table.num_rows


def test_warc_holds_pages_an_empty_response_and_a_revisit(corpus):
    types, empty, pages = Counter(), 0, []
    with open(corpus.inputs[3]["path"], "rb") as fh:
        for rec in ArchiveIterator(fh):
            types[rec.rec_type] += 1
            body = rec.content_stream().read()
            if rec.rec_type != "response":
                assert not body
            elif body:
                pages.append(body.decode())
            else:
                empty += 1
    assert types == {"response": corpus.n_warc_pages + 1, "revisit": corpus.n_warc_revisit}
    assert empty == 1 and corpus.n_empty == 2
    assert all("<nav>" in p and "<footer>" in p and p.count("<p>") >= 3 for p in pages)
    assert corpus.source_counts["crawl"] == sum(types.values())


def test_ground_truth_counts_match_the_files(corpus):
    texts = texts_by_id(corpus)
    kinds = Counter(corpus.kinds[i] for i in texts)
    assert kinds["exact_dup"] == corpus.n_exact_dups == round(0.05 * N_DOCS)
    assert kinds["near_dup"] == corpus.n_near_dups == round(0.08 * N_DOCS)
    assert (kinds["boilerplate"], kinds["spam"], kinds["short"]) == (corpus.n_boilerplate, corpus.n_spam,
                                                                   corpus.n_short)
    assert corpus.n_records == sum(corpus.source_counts.values()) == N_DOCS
    # Every repeated text is an injected copy, counted independently of the generator's bookkeeping.
    repeats = Counter(t for t in texts.values() if t)
    assert sum(c - 1 for c in repeats.values()) == corpus.n_exact_dups
    for group in corpus.exact_dup_groups:
        assert len({texts[i] for i in group}) == 1 and len(set(group)) == len(group) >= 2


def test_near_duplicates_are_similar_but_not_identical(corpus):
    texts = texts_by_id(corpus)
    assert sum(len(c) - 1 for c in corpus.near_dup_clusters) == corpus.n_near_dups
    assert all(2 <= len(c) <= 4 for c in corpus.near_dup_clusters)
    for original, *variants in corpus.near_dup_clusters:
        assert len(texts[original].split()) >= 200
        for v in variants:
            a, b = shingles(texts[original]), shingles(texts[v])
            jaccard = len(a & b) / len(a | b)
            assert 0.6 <= jaccard <= 0.97
            assert jaccard == pytest.approx(corpus.near_dup_jaccard[v], abs=1e-3)


def test_minhash_lsh_at_0_8_finds_the_near_duplicates_and_little_else(corpus):
    texts = {i: t for i, t in texts_by_id(corpus).items() if corpus.kinds[i] in ("article", "near_dup")}
    lsh, sigs = MinHashLSH(threshold=0.8, num_perm=128), {}
    for doc_id, text in texts.items():
        sigs[doc_id] = MinHash(num_perm=128, seed=1)
        sigs[doc_id].update_batch([" ".join(g).encode() for g in shingles(text)])
        lsh.insert(doc_id, sigs[doc_id])
    cluster_of = {i: n for n, c in enumerate(corpus.near_dup_clusters) for i in c}
    truth = {(c[0], v) for c in corpus.near_dup_clusters for v in c[1:]}
    found = {(c[0], v) for c in corpus.near_dup_clusters for v in c[1:] if c[0] in lsh.query(sigs[v])}
    unrelated = [(a, b) for a in texts for b in lsh.query(sigs[a])
                 if a < b and cluster_of.get(a, -1) != cluster_of.get(b, -2)]
    assert len(found) >= 0.8 * len(truth)
    assert unrelated == []


def test_good_documents_pass_gopher_style_rules(corpus):
    texts = texts_by_id(corpus)
    good = [t for i, t in texts.items() if corpus.kinds[i] in ("article", "near_dup") and corpus.langs[i] == "en"]
    junk = [t for i, t in texts.items() if corpus.kinds[i] in ("spam", "short")]

    def passes(text: str) -> bool:
        words = text.split()
        lines = [line for line in text.splitlines() if line.strip()]
        return (len(words) >= 50 and 3 <= sum(map(len, words)) / len(words) <= 10
                and sum(bool(re.search(r"[^\W\d_]", w)) for w in words) >= 0.8 * len(words)
                and len(STOP_WORDS & set(re.findall(r"\w+", text.lower()))) >= 2
                and sum(line.rstrip()[-1] in ".!?\"" for line in lines) >= 0.5 * len(lines))

    assert sum(map(passes, good)) >= 0.95 * len(good)
    assert sum(map(passes, junk)) <= 0.2 * len(junk)


def test_fasttext_lid_agrees_with_the_language_labels(corpus, shared_data):
    model = fasttext.load_model(str(shared_data / "fasttext-lid" / "lid.176.ftz"))
    texts = texts_by_id(corpus)
    ids = [i for i in texts if corpus.kinds[i] == "article"]
    labels, _ = model.predict([texts[i].replace("\n", " ") for i in ids])
    agree = sum(label[0] == f"__label__{corpus.langs[i]}" for i, label in zip(ids, labels))
    assert len({corpus.langs[i] for i in ids}) >= 5
    assert agree >= 0.95 * len(ids)
    assert 0.6 <= corpus.lang_counts["en"] / sum(corpus.lang_counts.values()) <= 0.85


def test_inputs_validate_as_config_and_truth_json_is_relative(corpus):
    config = parse_config({"inputs": corpus.inputs})
    assert [(i.format, i.source, i.text_field) for i in config.inputs][2] == ("parquet", "forum", "body")
    truth = json.loads((corpus.root / "truth.json").read_text())
    assert truth["inputs"][0]["path"] == "web/part-0000.jsonl.gz"
    assert truth["n_near_dups"] == corpus.n_near_dups


def test_cli_writes_a_corpus_and_prints_counts(tmp_path, capsys):
    main([str(tmp_path / "c"), "--docs", "120", "--seed", "3"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_records"] == 120
    assert (tmp_path / "c" / "crawl" / "crawl.warc.gz").is_file()


def test_too_few_docs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 100"):
        generate_corpus(tmp_path, n_docs=50)
