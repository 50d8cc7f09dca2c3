"""Fuzzy dedup's algorithms: datasketch compatibility, the LSH curve, components; the stage on real text."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from datasketch import MinHash, MinHashLSH
from dedup_support import edited, fates, rows_table, run_stage, web_texts, write_pieces

from pipeline.config import FuzzyDedupConfig, parse_config
from pipeline.mailbox import MIN_BOXES, boxes_for, deliver, part_name, post
from stages import fuzzy_dedup
from stages.dedup.components import both_directions, component_edges, distributed_components, local_components
from stages.dedup.lsh import band_hashes, band_rows, candidate_pairs, collision_probability, lsh_params
from stages.dedup.minhash import MinHashParams, normalize, shingle_hasher, shingle_hashes, shingle_lists, signatures

SHORT = ["", "Tiny.", "two words", "Punctuation!!! only, here?"]


@pytest.fixture(scope="module")
def corpus(shared_data) -> pa.Table:
    """200 real web documents plus 20 near copies of the first 20, ids shuffled against content order."""
    base = web_texts(shared_data, 200)
    texts = base + [edited(t, i, fraction=0.005) for i, t in enumerate(base[:20])]
    return rows_table([("web", f"doc-{(i * 7919) % 1000:04d}", t) for i, t in enumerate(texts)], piece_size=40)


def test_a_worker_given_pickled_params_signs_without_importing_datasketch_or_scipy():
    """The permutations travel inside the pickled params, and the stage's module imports neither
    library at the top, so a Ray worker running the stage's steps does not carry them (~46 MB)."""
    params = MinHashParams(num_perm=64, seed=7)
    script = ("import pickle, sys; import stages.fuzzy_dedup; from stages.dedup.minhash import signatures;"
              "params = pickle.loads(sys.stdin.buffer.read());"
              "sys.stdout.buffer.write(pickle.dumps((signatures(['a b c d e f g'], params),"
              " sorted({'datasketch', 'scipy'} & set(sys.modules)))))")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(params), capture_output=True,
                          check=True, cwd=root, env=os.environ | {"PYTHONPATH": str(root)}, timeout=120)
    sigs, imported = pickle.loads(done.stdout)
    assert imported == []
    assert np.array_equal(sigs, signatures(["a b c d e f g"], params))


@pytest.mark.parametrize("params", [MinHashParams(), MinHashParams(num_perm=64, seed=7, ngram=3),
                                    MinHashParams(ngram=4, char_ngrams=True, lowercase=False)])
def test_signatures_equal_datasketch_fed_the_same_shingles(shared_data, params):
    texts = SHORT + web_texts(shared_data, 8 if params.char_ngrams else 40, 0) + SHORT  # short ones between long ones
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


def test_normalising_replaces_only_the_runs_that_change_yet_equals_replacing_every_run(shared_data):
    texts = web_texts(shared_data, 40, 0) + SHORT + [" a  b\u00a0c\u3000d\te ", "x - y, z.", "\u00e9 \u00c9 \u00df"]
    column = pl.Series("text", texts).to_frame()
    every_run = pl.col("text").str.to_lowercase().str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars(" ")
    assert column.select(normalize(pl.col("text"))).equals(column.select(every_run))


def test_torch_backend_is_bit_identical_to_numpy(shared_data):
    texts = web_texts(shared_data, 60, 0) + SHORT
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
    per_doc = band_hashes(signatures(texts, params), bands, rows)
    hit = (per_doc[0::2] == per_doc[1::2]).any(axis=1).reshape(len(levels), pairs).mean(axis=1)
    expected = collision_probability(np.array(levels), bands, rows)
    tolerance = 4 * np.sqrt(expected * (1 - expected) / pairs) + 0.03
    assert np.all(np.abs(hit - expected) <= tolerance), list(zip(levels, hit, expected))


def test_candidates_equal_datasketch_minhash_lsh(corpus):
    params = MinHashParams()
    bands, rows = lsh_params(0.8, params.num_perm)
    sigs = signatures(corpus["text"], params)
    keys = corpus["id"].to_pylist()
    lsh = MinHashLSH(num_perm=params.num_perm, params=(bands, rows))
    for key, sig in zip(keys, sigs):
        lsh.insert(key, MinHash(hashvalues=sig, seed=params.seed, scheme="affine32"))
    theirs = {tuple(sorted((k, other))) for k, sig in zip(keys, sigs)
              for other in lsh.query(MinHash(hashvalues=sig, seed=params.seed, scheme="affine32")) if other != k}
    table = pl.from_arrow(band_rows(corpus["id"], band_hashes(sigs, bands, rows)))
    joined = table.join(table, on=["band", "band_hash"]).filter(pl.col("key") < pl.col("key_right"))
    ours = set(joined.select("key", "key_right").unique().iter_rows())
    assert len(ours) >= 20 and ours == theirs
    # small buckets yield exactly those pairs
    found = candidate_pairs(band_rows(corpus["id"], band_hashes(sigs, bands, rows)))
    assert {tuple(sorted(p)) for p in zip(found["node"].to_pylist(), found["root"].to_pylist())} == ours


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


def test_distributed_components_equal_union_find(ray_cluster, tmp_path):
    edges = chain_graph(1)
    expected = local_components(edges)
    assert expected.num_rows == len(set(edges["node"].to_pylist()) | set(edges["root"].to_pylist())) - 30
    for i in range(0, edges.num_rows, 97):  # several senders, as the verifying tasks are
        post(both_directions(edges.slice(i, 97), partitions=5), tmp_path / "edges", part_name(i))
    final = distributed_components(tmp_path / "edges", tmp_path, partitions=5)
    got = pa.concat_tables(deliver(final, lambda letters, box: component_edges(letters)))
    assert got.sort_by("node").combine_chunks().equals(expected.combine_chunks())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edges", final.name]  # the rounds' mailboxes go


def test_ray_stage_matches_the_pure_function_whatever_blocks_and_clustering(ray_cluster, corpus, tmp_path,
                                                                           monkeypatch):
    pure = fuzzy_dedup.process(corpus, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig()))
    assert pure.decisions.num_rows >= 20
    rows = write_pieces(tmp_path, corpus)
    for blocks, clustering in [(1, "union_find"), (4, "distributed")]:
        got = run_stage(ray_cluster, fuzzy_dedup, tmp_path, rows, blocks=blocks, fuzzy={"clustering": clustering})
        assert got.equals(pure.decisions), clustering
    # a large corpus's shape: many more boxes than the minimum, each piece file verified by its own task
    monkeypatch.setattr(fuzzy_dedup, "DOCS_PER_BOX", 3)
    assert boxes_for(rows.num_rows, fuzzy_dedup.DOCS_PER_BOX) > 2 * MIN_BOXES
    assert len(set(rows["_piece"].to_pylist())) > 1
    assert run_stage(ray_cluster, fuzzy_dedup, tmp_path, rows, blocks=2).equals(pure.decisions)


def test_pride_and_prejudice_editions_cluster_and_other_books_do_not(ray_cluster, shared_data, tmp_path):
    books = sorted((shared_data / "gutenberg").glob("*.txt"))
    texts = [p.read_text(encoding="utf-8" if p.name.startswith("gitenberg") else "cp1252") for p in books]
    rows = write_pieces(tmp_path, rows_table([("gutenberg", p.stem, t) for p, t in zip(books, texts)]))
    got = run_stage(ray_cluster, fuzzy_dedup, tmp_path, rows, blocks=2)
    assert fates(got, rows) == {("gutenberg", "pg1342_with_pg_header"): "near_duplicate"}
    assert got["duplicate_of"].to_pylist() == ["gitenberg_1342-0"]


def test_cli_overrides_are_validated():
    cfg = fuzzy_dedup.configure(parse_config({}), threshold=0.9, num_perm=64, ngram=3)
    assert (cfg.dedup.fuzzy.threshold, cfg.dedup.fuzzy.num_perm, cfg.dedup.fuzzy.ngram) == (0.9, 64, 3)
    with pytest.raises(ValueError):
        fuzzy_dedup.configure(parse_config({}), threshold=1.5)


def test_verification_only_ever_splits_clusters(corpus):
    """Without verification every bucket pair counts, so each verified rejection stays rejected."""
    verified = fuzzy_dedup.process(corpus, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(threshold=0.5)))
    loose = FuzzyDedupConfig(threshold=0.5, verify=False)
    unverified = fuzzy_dedup.process(corpus, fuzzy_dedup.Settings.from_config(loose))
    rows = lambda t: set(zip(t["_piece"].to_pylist(), t["_row"].to_pylist()))  # noqa: E731
    assert rows(verified.decisions) <= rows(unverified.decisions)
    assert verified.decisions.num_rows >= 20
