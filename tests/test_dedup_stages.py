"""The shuffle stages (duplicate ids, exact and fuzzy dedup) on the core's contract: rows in, decisions out.

Each stage is tested as a pure function on a table and through `build(cfg, workdir)` on a small
table read in parts by Ray tasks, whose rows point at real piece files (`_file`, `_row`) under a run
root, as the core's do.
"""
from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dedup_support import edited, fates, rows_table, run_stage, web_texts, write_pieces

import pipeline.mailbox
from pipeline.config import FuzzyDedupConfig, parse_config
from stages import duplicate_ids, exact_dedup, fuzzy_dedup
from stages.dedup.jaccard import jaccard, shingle_sets
from stages.dedup.lsh import collision_probability, lsh_params
from stages.dedup.minhash import MinHashParams, signatures


@pytest.fixture(scope="module")
def texts(shared_data) -> list[str]:
    return web_texts(shared_data, 12)


# ---------------------------------------------------------------- identity is (source, id)

def test_reused_ids_across_sources_do_not_collide(ray_cluster, texts, tmp_path):
    """(a,1,T), (a,2,near copy of T), (b,2,unrelated): only (a,2) is rejected, pure and on Ray."""
    rows = rows_table([("a", "1", texts[0]), ("a", "2", edited(texts[0], 1)), ("b", "2", texts[1])], piece_size=1)
    settings = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig())
    pure = fuzzy_dedup.process(rows, settings)
    assert fates(pure.decisions, rows) == {("a", "2"): "near_duplicate"}
    assert pure.decisions.select(["duplicate_of", "duplicate_of_source"]).to_pylist() == [
        {"duplicate_of": "1", "duplicate_of_source": "a"}]
    assert sorted(pure.index.select(["source", "id"]).to_pylist(), key=str) == [
        {"source": "a", "id": "1"}, {"source": "b", "id": "2"}]
    got = run_stage(ray_cluster, fuzzy_dedup, tmp_path, write_pieces(tmp_path, rows))
    assert got.equals(pure.decisions)
    written = pq.read_table(fuzzy_dedup.find_index(tmp_path, fuzzy_dedup.INDEX_DIR), schema=fuzzy_dedup.INDEX_SCHEMA)
    assert written.sort_by([("file", "ascending"), ("row", "ascending")]).equals(pure.index)


def test_exact_dedup_keys_on_source_and_id(ray_cluster, texts, tmp_path, monkeypatch):
    rows = rows_table([("b", "1", texts[0]), ("a", "1", texts[0]), ("a", "2", texts[1]), ("b", "2", texts[2])])
    pure = exact_dedup.process(rows)
    assert fates(pure.decisions, rows) == {("b", "1"): "exact_duplicate"}
    assert pure.decisions["duplicate_of_source"].to_pylist() == ["a"]
    got = run_stage(ray_cluster, exact_dedup, tmp_path, write_pieces(tmp_path, rows))
    assert got.equals(pure.decisions)
    monkeypatch.setattr(pipeline.mailbox, "MIN_BOXES", 1)
    monkeypatch.setattr(exact_dedup, "ROWS_PER_BOX", 1)  # four boxes, not eight: the same decisions
    assert run_stage(ray_cluster, exact_dedup, tmp_path / "many", write_pieces(tmp_path / "many", rows)).equals(
        pure.decisions)


def test_exact_dedup_against_an_earlier_index_rejects_only_texts_it_kept():
    old = exact_dedup.process(rows_table([("old", "o1", "kept before"), ("old", "o2", "other old")])).index
    rows = rows_table([("a", "1", "brand new"), ("a", "2", "kept before"), ("a", "3", "brand new")])
    out = exact_dedup.process(rows, seen=old)
    assert fates(out.decisions, rows) == {("a", "2"): "exact_duplicate", ("a", "3"): "exact_duplicate"}
    assert out.decisions.select(["duplicate_of", "duplicate_of_source"]).to_pylist() == [
        {"duplicate_of": "o1", "duplicate_of_source": "old"}, {"duplicate_of": "1", "duplicate_of_source": "a"}]
    assert sorted(out.index["id"].to_pylist()) == ["1", "o1", "o2"]


def test_exact_dedup_on_sms_spam_rejects_exactly_the_repeated_copies(shared_data):
    with open(shared_data / "sms-spam" / "SMSSpamCollection.tsv", encoding="utf-8", newline="") as fh:
        texts = [row[1] for row in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]
    repeated = len(texts) - len(set(texts))  # counted independently: 403 per the data's manifest
    out = exact_dedup.process(rows_table([("sms", f"{i:05d}", t) for i, t in enumerate(texts)], piece_size=1000))
    assert out.decisions.num_rows == repeated == 403
    assert out.index.num_rows == len(set(texts))


def test_duplicate_id_rejects_later_records_of_one_source_naming_the_first(ray_cluster, tmp_path, monkeypatch):
    rows = rows_table([("a", "7", "x"), ("b", "7", "y"), ("a", "7", "z"), ("a", "8", "w"), ("a", "7", "v")])
    pure = duplicate_ids.process(rows)
    assert pure.select(["_piece", "_row", "reason", "detail", "duplicate_of_source"]).to_pylist() == [
        {"_piece": 1, "_row": 0, "reason": "duplicate_id", "detail": "id already used by the record at a.jsonl:1",
         "duplicate_of_source": "a"},
        {"_piece": 2, "_row": 0, "reason": "duplicate_id", "detail": "id already used by the record at a.jsonl:1",
         "duplicate_of_source": "a"}]
    assert run_stage(ray_cluster, duplicate_ids, tmp_path, rows).equals(pure)
    monkeypatch.setattr(pipeline.mailbox, "MIN_BOXES", 1)
    monkeypatch.setattr(duplicate_ids, "ROWS_PER_BOX", 1)  # five boxes, not eight: the same decisions
    assert run_stage(ray_cluster, duplicate_ids, tmp_path / "many", rows).equals(pure)


def test_youtube_csvs_repeat_ids_and_each_repeat_is_named(shared_data):
    import pyarrow.csv as pcsv

    tables = []
    for path in sorted((shared_data / "youtube-spam").glob("*.csv")):
        t = pcsv.read_csv(path).select(["COMMENT_ID"])
        tables.append(pa.table({"source": ["youtube"] * t.num_rows, "id": t["COMMENT_ID"].cast(pa.string()),
                                "origin": [f"{path.name}:{i + 2}" for i in range(t.num_rows)],
                                "_piece": pa.array([len(tables)] * t.num_rows, pa.int32()),
                                "_row": pa.array(range(t.num_rows), pa.int32())}))
    rows = pa.concat_tables(tables)
    out = duplicate_ids.process(rows)
    ids = rows["id"].to_pylist()
    assert out.num_rows == len(ids) - len(set(ids)) > 0
    assert all(d.startswith("id already used by the record at Youtube") for d in out["detail"].to_pylist())


# ---------------------------------------------------------------- threshold = exact Jaccard

def test_bands_and_rows_give_recall_at_the_threshold():
    for threshold in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(threshold, 128)
        assert bands * rows <= 128
        assert collision_probability(threshold, bands, rows) >= 0.95
    assert lsh_params(0.8, 128, 4, 8) == (4, 8)


def _pair_at(texts: list[str], params: MinHashParams, target: float,
             minhash_says_above: bool) -> tuple[str, str, float]:
    """A real text and an edited copy whose exact Jaccard is within 0.03 of `target` and whose MinHash
    estimate falls on the other side of `target` from the truth."""
    for text in texts:
        for seed in range(400):
            copy = edited(text, seed, fraction=float(np.random.default_rng(seed).uniform(0.01, 0.08)))
            a, b = shingle_sets([text, copy], params)
            true = jaccard(a, b)
            sigs = signatures([text, copy], params)
            estimate = float((sigs[0] == sigs[1]).mean())
            if abs(true - target) < 0.03 and (true >= target) != minhash_says_above \
                    and (estimate >= target) == minhash_says_above:
                return text, copy, true
    raise AssertionError("no such pair found")


@pytest.fixture(scope="module")
def borderline(texts) -> dict[str, tuple[str, str, float]]:
    """Pairs around the 0.8 threshold that the MinHash estimate puts on the wrong side, from two
    different texts of texts[8:] (the other tests use the first eight)."""
    params = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(threshold=0.8)).minhash
    above = _pair_at(texts[8:], params, 0.8, minhash_says_above=False)  # true >= 0.8, estimate < 0.8
    below = _pair_at([t for t in texts[8:] if t != above[0]], params, 0.8, minhash_says_above=True)  # the reverse
    return {"above": above, "below": below}


def test_exact_verification_keeps_a_true_pair_the_estimate_drops_and_drops_one_below(borderline):
    settings = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(threshold=0.8))
    assert borderline["above"][2] >= 0.8 > borderline["below"][2]
    for name, rejected in [("above", True), ("below", False)]:
        text, copy, true = borderline[name]
        rows = rows_table([("s", "a", text), ("s", "b", copy)], piece_size=1)
        out = fuzzy_dedup.process(rows, settings)
        assert (out.decisions.num_rows == 1) == rejected, true


# ---------------------------------------------------------------- keep policy

@pytest.mark.parametrize("keep, keeper", [("first", "a"), ("longest", "c"), ("quality", "b")])
def test_keep_policy_picks_the_keeper(texts, keep, keeper):
    base = texts[2]
    docs = [("s", "a", base), ("s", "b", edited(base, 1)), ("s", "c", base + " and a longer tail of words"),
            ("s", "d", texts[3])]
    rows = rows_table(docs, quality=[0.2, 0.9, None, 1.0])
    fuzzy = fuzzy_dedup.process(rows, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(), keep))
    assert set(fuzzy.decisions["duplicate_of"].to_pylist()) == {keeper}
    assert sorted(fates(fuzzy.decisions, rows)) == sorted(("s", x) for x in "abc" if x != keeper)
    same = rows_table([("s", "a", base), ("s", "b", base), ("s", "c", base)], quality=[0.2, 0.9, None])
    exact = exact_dedup.process(same, keep)
    assert set(exact.decisions["duplicate_of"].to_pylist()) == {"b" if keep == "quality" else "a"}


def test_quality_ties_break_by_source_and_id_and_missing_scores_sort_last(texts):
    same = rows_table([("s", "b", texts[0]), ("s", "a", texts[0]), ("r", "z", texts[0])], quality=[0.5, 0.5, None])
    assert set(exact_dedup.process(same, "quality").decisions["duplicate_of"].to_pylist()) == {"a"}


# ---------------------------------------------------------------- incremental runs

def test_against_an_earlier_run_verifies_exactly_and_chains(ray_cluster, texts, borderline, tmp_path):
    above, below = borderline["above"], borderline["below"]
    first = rows_table([("a", str(i), t) for i, t in enumerate(texts[:4])] + [("a", "above", above[0]),
                                                                              ("a", "below", below[0])])
    run_stage(ray_cluster, fuzzy_dedup, tmp_path / "r1", write_pieces(tmp_path / "r1", first))
    index = pq.read_table(fuzzy_dedup.find_index(tmp_path / "r1", fuzzy_dedup.INDEX_DIR))
    assert index.num_rows == 6

    second = rows_table([("b", "0", edited(texts[1], 5)), ("b", "1", texts[7]), ("b", "2", above[1]),
                         ("b", "3", below[1])])
    rows = write_pieces(tmp_path / "r2", second)
    got = run_stage(ray_cluster, fuzzy_dedup, tmp_path / "r2", rows, fuzzy={"against": str(tmp_path / "r1")})
    assert got.select(["_piece", "_row", "duplicate_of", "duplicate_of_source"]).to_pylist() == [
        {"_piece": 0, "_row": 0, "duplicate_of": "1", "duplicate_of_source": "a"},
        {"_piece": 1, "_row": 0, "duplicate_of": "above", "duplicate_of_source": "a"}]

    # the pure function, given the same earlier run, decides the same; unverified, it would also
    # reject the copy below the threshold: verification against the earlier run's text decided
    settings = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig())
    earlier = fuzzy_dedup.Earlier.load(tmp_path / "r1", settings)
    assert fuzzy_dedup.process(second, settings, earlier).decisions.equals(got)
    unverified = fuzzy_dedup.Settings.from_config(FuzzyDedupConfig(verify=False))
    assert (1, 1) in fates_rows(fuzzy_dedup.process(second, unverified, earlier).decisions)

    # a third run against the second also sees the first run's documents, through the chain
    third = write_pieces(tmp_path / "r3", rows_table([("c", "0", edited(texts[3], 7)),
                                                      ("c", "1", edited(texts[7], 8))]))
    got = run_stage(ray_cluster, fuzzy_dedup, tmp_path / "r3", third, fuzzy={"against": str(tmp_path / "r2")})
    assert got.select(["duplicate_of", "duplicate_of_source"]).to_pylist() == [
        {"duplicate_of": "3", "duplicate_of_source": "a"}, {"duplicate_of": "1", "duplicate_of_source": "b"}]


def fates_rows(decisions: pa.Table) -> set[tuple[int, int]]:
    return set(zip(decisions["_piece"].to_pylist(), decisions["_row"].to_pylist()))


def test_exact_against_an_earlier_run(ray_cluster, texts, tmp_path):
    run_stage(ray_cluster, exact_dedup, tmp_path / "r1", rows_table([("a", "1", texts[0]), ("a", "2", texts[1])]))
    got = run_stage(ray_cluster, exact_dedup, tmp_path / "r2",
                    rows_table([("b", "0", texts[1]), ("b", "1", texts[2])]), exact={"against": str(tmp_path / "r1")})
    assert got.select(["_row", "duplicate_of", "duplicate_of_source"]).to_pylist() == [
        {"_row": 0, "duplicate_of": "2", "duplicate_of_source": "a"}]


def test_fingerprint_follows_config_keep_and_the_earlier_index_content(ray_cluster, texts, tmp_path):
    base = parse_config({"out": str(tmp_path / "r2")})
    assert fuzzy_dedup.fingerprint(base) == fuzzy_dedup.fingerprint(parse_config({"out": "elsewhere"}))
    assert fuzzy_dedup.fingerprint(base) != fuzzy_dedup.fingerprint(parse_config({"dedup": {"keep": "longest"}}))
    assert exact_dedup.fingerprint(base) != exact_dedup.fingerprint(parse_config({"dedup": {"keep": "quality"}}))
    one = rows_table([("a", "1", texts[0])])
    run_stage(ray_cluster, fuzzy_dedup, tmp_path / "r1", write_pieces(tmp_path / "r1", one))
    against = parse_config({"dedup": {"fuzzy": {"against": str(tmp_path / "r1")}}})
    before = fuzzy_dedup.fingerprint(against)
    part = sorted(fuzzy_dedup.find_index(tmp_path / "r1", fuzzy_dedup.INDEX_DIR).glob("*.parquet"))[0]
    pq.write_table(pq.read_table(part).slice(0, 0), part)
    assert fuzzy_dedup.fingerprint(against) != before


def test_an_index_built_with_other_parameters_is_refused(ray_cluster, texts, tmp_path):
    one = rows_table([("a", "1", texts[0])])
    run_stage(ray_cluster, fuzzy_dedup, tmp_path / "r1", write_pieces(tmp_path / "r1", one),
              fuzzy={"num_perm": 64})
    with pytest.raises(ValueError, match="num_perm"):
        fuzzy_dedup.Earlier.load(tmp_path / "r1", fuzzy_dedup.Settings.from_config(FuzzyDedupConfig()))


def test_no_rows_no_decisions():
    rows = rows_table([("a", "1", "x")]).slice(0, 0)
    assert fuzzy_dedup.process(rows, fuzzy_dedup.Settings.from_config(FuzzyDedupConfig())).decisions.num_rows == 0
    assert exact_dedup.process(rows).decisions.num_rows == duplicate_ids.process(rows).num_rows == 0
