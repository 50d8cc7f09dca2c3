"""Fuzzy dedup: datasketch compatibility, the LSH curve, components, keepers, incremental runs."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash, MinHashLSH

from pipeline.config import FuzzyDedupConfig, parse_config
from pipeline.rundir import RunDir, atomic_write_json
from pipeline.stage import run_stage
from pipeline.schema import DOC_SCHEMA
from stages import fuzzy_dedup
from stages.components import distributed_components, local_components
from stages.lsh import band_rows, collision_probability, lsh_params, star_edges
from stages.minhash import MinHashParams, shingle_hasher, shingle_hashes, shingle_lists, signatures

SHORT = ["", "Tiny.", "two words", "Punctuation!!! only, here?"]


def web_texts(shared: Path, n: int) -> list[str]:
    texts = []
    for path in sorted((shared / "cc-web-docs").glob("*.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    return texts[:n]


def near_copy(text: str, seed: int) -> str:
    """The same text with a few words changed: a Jaccard well above 0.8 for a long document."""
    words = text.split()
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(words), size=max(1, len(words) // 200), replace=False):
        words[i] = f"changed{seed}"
    return " ".join(words)


def docs_table(texts: list[str], ids: list[str] | None = None, source: str = "web", **extra) -> pa.Table:
    n = len(texts)
    table = pa.table({"id": ids or [f"doc-{i:05d}" for i in range(n)], "text": texts, "source": [source] * n,
                      "url": [None] * n, "meta": [None] * n}).cast(DOC_SCHEMA)
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values))
    return table


@pytest.fixture(scope="module")
def corpus(shared_data) -> pa.Table:
    """200 real web documents plus 20 near copies of the first 20, ids shuffled against content order."""
    base = [t for t in web_texts(shared_data, 400) if len(t.split()) > 300][:200]
    texts = base + [near_copy(t, i) for i, t in enumerate(base[:20])]
    ids = [f"doc-{(i * 7919) % 1000:04d}" for i in range(len(texts))]
    return docs_table(texts, ids)


@pytest.mark.parametrize("params", [MinHashParams(), MinHashParams(num_perm=64, seed=7, ngram=3),
                                    MinHashParams(ngram=4, char_ngrams=True, lowercase=False)])
def test_signatures_equal_datasketch_fed_the_same_shingles(shared_data, params):
    texts = web_texts(shared_data, 8 if params.char_ngrams else 40) + SHORT
    lists = shingle_lists(texts, params)
    shingle_hash = shingle_hasher(params)
    hashes, doc = shingle_hashes(texts, params)
    assert hashes.tolist() == [shingle_hash(s) for shingles in lists for s in shingles]
    assert doc.tolist() == [i for i, shingles in enumerate(lists) for _ in shingles]
    sigs = signatures(texts, params)
    for sig, shingles in zip(sigs, lists):
        m = MinHash(num_perm=params.num_perm, seed=params.seed, hashfunc=shingle_hash)
        m.update_batch(shingles)
        assert np.array_equal(m.hashvalues, sig)
    assert all(lists)  # every document, even an empty one, has a shingle
    if not params.char_ngrams:  # fewer words than the n-gram size: the whole normalised text
        assert lists[-4:] == [[""], ["tiny"], ["two words"], ["punctuation only here"]]


def test_torch_backend_is_bit_identical_to_numpy(shared_data):
    texts = web_texts(shared_data, 60) + SHORT
    params = MinHashParams()
    assert np.array_equal(signatures(texts, params, "torch"), signatures(texts, params, "numpy"))


def test_detection_rate_follows_the_lsh_s_curve():
    """Pairs of token sets with exact Jaccard s: the share sharing a bucket matches 1-(1-s^r)^b.

    Tolerance: 4 binomial standard deviations of the observed share plus 0.03 for the hash
    family being only approximately min-wise independent.
    """
    bands, rows = lsh_params(0.8, 128)
    params = MinHashParams(ngram=1)
    rng = np.random.default_rng(0)
    levels, pairs, union = [0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0], 300, 100
    texts = []
    for s in levels:
        common = round(s * union)
        for _ in range(pairs):
            tokens = [f"t{x}" for x in rng.choice(10**9, size=union, replace=False)]
            shared, rest, half = tokens[:common], tokens[common:], (union - common) // 2
            texts += [" ".join(shared + rest[:half]), " ".join(shared + rest[half:])]
    hashes = band_rows(pa.array([str(i) for i in range(len(texts))]), signatures(texts, params), bands, rows)
    per_doc = np.asarray(hashes["band_hash"]).reshape(len(texts), bands)
    hit = (per_doc[0::2] == per_doc[1::2]).any(axis=1).reshape(len(levels), pairs).mean(axis=1)
    expected = collision_probability(np.array(levels), bands, rows)
    tolerance = 4 * np.sqrt(expected * (1 - expected) / pairs) + 0.03
    assert np.all(np.abs(hit - expected) <= tolerance), list(zip(levels, hit, expected))


def test_candidates_equal_datasketch_minhash_lsh(corpus):
    params = MinHashParams()
    bands, rows = lsh_params(0.8, params.num_perm)
    sigs = signatures(corpus["text"], params)
    keys = corpus["id"].to_pylist()
    lsh = MinHashLSH(threshold=0.8, num_perm=params.num_perm)
    assert (lsh.b, lsh.r) == (bands, rows)
    for key, sig in zip(keys, sigs):
        lsh.insert(key, MinHash(hashvalues=sig, seed=params.seed, scheme="affine32"))
    theirs = {tuple(sorted((k, other))) for k, sig in zip(keys, sigs)
              for other in lsh.query(MinHash(hashvalues=sig, seed=params.seed, scheme="affine32")) if other != k}
    table = pl.from_arrow(band_rows(corpus["id"], sigs, bands, rows))
    joined = table.join(table, on=["band", "band_hash"]).filter(pl.col("key") < pl.col("key_right"))
    ours = set(joined.select("key", "key_right").unique().iter_rows())
    assert len(ours) >= 20 and ours == theirs
    # the star edges span exactly the same clusters as all those pairs
    pairs = pa.table({"node": [a for a, _ in ours], "root": [b for _, b in ours]})
    assert local_components(star_edges(band_rows(corpus["id"], sigs, bands, rows))) == local_components(pairs)


def chain_graph(seed: int) -> pa.Table:
    """Random components, including long paths whose min sits at the far end (several rounds)."""
    rng = np.random.default_rng(seed)
    edges = []
    for c in range(30):
        nodes = [f"n{c:02d}-{x:03d}" for x in rng.permutation(int(rng.integers(2, 40)))]
        edges += list(zip(nodes[1:], nodes[:-1]))  # a path in random order
        edges += [(nodes[int(rng.integers(len(nodes)))], nodes[int(rng.integers(len(nodes)))]) for _ in range(3)]
    edges = [(a, b) for a, b in edges if a != b]
    return pa.table({"node": [a for a, _ in edges], "root": [b for _, b in edges]})


def test_distributed_components_equal_union_find(ray_cluster):
    edges = chain_graph(1)
    expected = local_components(edges)
    assert expected.num_rows == len(set(edges["node"].to_pylist()) | set(edges["root"].to_pylist())) - 30
    ds = ray_cluster.data.from_arrow([edges.slice(i, 97) for i in range(0, edges.num_rows, 97)])
    got = pa.concat_tables(ray_cluster.get(distributed_components(ds, partitions=5).to_arrow_refs()))
    assert got.sort_by("node").combine_chunks().equals(expected.combine_chunks())


def test_keeper_is_the_highest_quality_member_else_smallest_source_and_id(corpus):
    texts = corpus["text"].to_pylist()[:3]
    copies = [texts[0], near_copy(texts[0], 1), near_copy(texts[0], 2), texts[1], texts[2]]
    ids = ["b", "a", "c", "d", "e"]
    plain, _ = fuzzy_dedup.dedup_table(docs_table(copies, ids), FuzzyDedupConfig())
    assert sorted(plain.rejected["id"].to_pylist()) == ["b", "c"]
    assert set(plain.rejected["duplicate_of"].to_pylist()) == {"a"}
    assert len(set(plain.rejected["cluster_id"].to_pylist())) == 1
    scored, _ = fuzzy_dedup.dedup_table(docs_table(copies, ids, quality_score=[0.2, 0.1, 0.9, 0.5, None]),
                                        FuzzyDedupConfig())
    assert sorted(scored.rejected["id"].to_pylist()) == ["a", "b"]
    assert set(scored.rejected["duplicate_of"].to_pylist()) == {"c"}
    assert scored.kept.column_names == docs_table(copies, ids, quality_score=[0.0] * 5).column_names


def run_fuzzy(tmp: Path, table: pa.Table, blocks: int, **fuzzy) -> tuple[pa.Table, Path]:
    """The stage through the lead's runner: (all output rows sorted by id, the run root)."""
    import ray

    cfg = parse_config({"dedup": {"fuzzy": fuzzy}, "output": {"partitions": 3}})
    run = RunDir(tmp)
    chunk = -(-table.num_rows // blocks)
    upstream = lambda: ray.data.from_arrow([table.slice(i, chunk) for i in range(0, table.num_rows, chunk)])  # noqa: E731
    count = run_stage(run, "05-fuzzy_dedup", "fp", fuzzy_dedup.build, upstream, cfg, table.num_rows)
    folder = run.stage_path("05-fuzzy_dedup")
    rejected = [pq.read_table(p) for p in sorted((folder / "rejected").glob("*.parquet"))]
    assert count.kept + count.rejected_total == table.num_rows
    out = pa.concat_tables(rejected) if rejected else pa.table({"id": pa.array([], pa.string())})
    return out.sort_by("id"), tmp


def test_ray_stage_matches_the_pure_function_whatever_blocks_and_clustering(ray_cluster, corpus, tmp_path):
    pure, _ = fuzzy_dedup.dedup_table(corpus, FuzzyDedupConfig(), stage="05-fuzzy_dedup")
    assert pure.rejected.num_rows >= 20
    expected = pure.rejected.sort_by("id").select(["id", "duplicate_of", "cluster_id", "reason", "stage"])
    runs = [(1, "union_find"), (4, "distributed")]
    for i, (blocks, clustering) in enumerate(runs):
        got, _ = run_fuzzy(tmp_path / str(i), corpus, blocks, clustering=clustering)
        assert got.select(expected.column_names).replace_schema_metadata(None).equals(expected)


def test_pride_and_prejudice_editions_cluster_and_other_books_do_not(ray_cluster, shared_data, tmp_path):
    books = sorted((shared_data / "gutenberg").glob("*.txt"))
    texts = [p.read_text(encoding="utf-8" if p.name.startswith("gitenberg") else "cp1252") for p in books]
    got, _ = run_fuzzy(tmp_path, docs_table(texts, [p.stem for p in books], source="gutenberg"), blocks=2)
    assert got.select(["id", "duplicate_of", "reason"]).to_pylist() == [
        {"id": "pg1342_with_pg_header", "duplicate_of": "gitenberg_1342-0", "reason": "near_duplicate"}]


def test_incremental_run_rejects_a_near_copy_of_an_old_document_and_nothing_else(ray_cluster, corpus, tmp_path):
    old_docs, new_unique = corpus.slice(0, 100), corpus.slice(100, 50)
    first, first_root = run_fuzzy(tmp_path / "first", old_docs, blocks=2)
    old_index = fuzzy_dedup.find_band_index(first_root)
    old_rows = pq.read_table(old_index).num_rows
    bands, _ = lsh_params(0.8, 128)
    assert old_rows == (100 - first.num_rows) * bands

    copy_of = old_docs["id"][7].as_py()
    new = pa.concat_tables([new_unique, docs_table([near_copy(old_docs["text"][7].as_py(), 99)], ["fresh-copy"])])
    second, second_root = run_fuzzy(tmp_path / "second", new, blocks=3, against=str(first_root))
    assert second.select(["id", "duplicate_of"]).to_pylist() == [{"id": "fresh-copy", "duplicate_of": copy_of}]
    extended = pq.read_table(fuzzy_dedup.find_band_index(second_root))
    assert extended.num_rows == old_rows + new_unique.num_rows * bands
    assert set(extended["id"].to_pylist()) >= set(pq.read_table(old_index)["id"].to_pylist())


def test_index_built_with_other_parameters_is_refused(tmp_path):
    folder = tmp_path / "stages" / "05-fuzzy_dedup" / fuzzy_dedup.INDEX_DIR
    theirs = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(num_perm=64))
    atomic_write_json(folder / fuzzy_dedup.INDEX_PARAMS, theirs.index_meta())
    assert fuzzy_dedup.find_band_index(tmp_path) == folder
    with pytest.raises(ValueError, match="num_perm"):
        fuzzy_dedup.index_files(folder, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig()))
    assert fuzzy_dedup.index_files(folder, theirs) == []


def test_cli_overrides_are_validated():
    cfg = fuzzy_dedup.configure(parse_config({}), threshold=0.9, num_perm=64, ngram=3)
    assert (cfg.dedup.fuzzy.threshold, cfg.dedup.fuzzy.num_perm, cfg.dedup.fuzzy.ngram) == (0.9, 64, 3)
    with pytest.raises(ValueError):
        fuzzy_dedup.configure(parse_config({}), threshold=1.5)



def test_verification_only_ever_splits_clusters(corpus):
    """Without verification every bucket pair counts, so each verified rejection stays rejected."""
    verified, _ = fuzzy_dedup.dedup_table(corpus, FuzzyDedupConfig(threshold=0.5))
    unverified, _ = fuzzy_dedup.dedup_table(corpus, FuzzyDedupConfig(threshold=0.5, verify=False))
    assert set(verified.rejected["id"].to_pylist()) <= set(unverified.rejected["id"].to_pylist())
    assert verified.rejected.num_rows >= 20
