"""Tokenize + shard on real text and real tokenizers: dtypes, exact round trips, determinism, resumability,
and appending later batches as new manifest versions."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from typer.testing import CliRunner

from flows.cli import app
from pipeline.config import SluiceConfig
from pipeline.manifest import ShardError, read_manifest
from pipeline.schema import DOC_SCHEMA
from pipeline.shardfile import file_sha256, open_shard, token_view
from stages.shard import ShardWindow, inspect_shards, window_documents
from stages.bpe import train_bpe, train_bpe_apart
from stages.tokenize import append_shards, hash_keys, resolve_eod, sample_texts, tokenize_run
from stages.train.data import NewShardVersion, open_loaders

ROOT = Path(__file__).resolve().parent.parent
NEOX = "tokenizers/dolma_gpt-neo-test-tokenizer.json"
LLAMA = "tokenizers/dolma_llama-test-tokenizer.json"


def real_docs(shared: Path, per_source: int = 120) -> list[dict]:
    """Wikitext articles and Shakespeare scenes, with their own ids and sources."""
    docs = []
    for source, rel, sep in [("wiki", "wikitext-2/valid.txt", "\n = "), ("plays", "tinyshakespeare/input.txt", "\n\n")]:
        parts = [p for p in (shared / rel).read_text(encoding="utf-8").split(sep) if p.strip()][:per_source]
        docs += [{"id": f"{source}-{i:04d}", "text": t, "source": source, "url": None, "meta": "{}"}
                 for i, t in enumerate(parts)]
    return docs


def make_run(root: Path, docs: list[dict], parts: int = 3) -> Path:
    """A curated run as the pipeline leaves it: RUN/kept/part-*.parquet in DOC_SCHEMA."""
    (root / "kept").mkdir(parents=True)
    for p in range(parts):
        pq.write_table(pa.Table.from_pylist(docs[p::parts], schema=DOC_SCHEMA), root / "kept" / f"part-{p:05d}.parquet")
    return root


def config(tokenizer: str | None = None, eod_token: str | None = "auto", **shard) -> SluiceConfig:
    return SluiceConfig.model_validate({"shard": {"tokens_per_shard": 20_000, **shard},
                                        "tokenize": {"vocab_size": 600, "train_sample_docs": 200,
                                                     "tokenizer": tokenizer, "eod_token": eod_token}})


def read_docs(shard_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(doc_id, tokens) of every document, in shard order."""
    out = []
    for entry in read_manifest(shard_dir).shards:
        for batch in open_shard(shard_dir, entry, verify="sha256"):
            values, offsets = token_view(batch)
            out += [(d, values[a:b]) for d, a, b in zip(batch.column("doc_id").to_pylist(), offsets[:-1], offsets[1:])]
    return out


def folder_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def docs(shared_data) -> list[dict]:
    return real_docs(shared_data)


@pytest.mark.parametrize("rel", [NEOX, LLAMA])
def test_real_tokenizers_give_uint16_shards_with_full_manifest(tmp_path, docs, shared_data, ray_cluster, rel):
    source = shared_data / rel
    out = tokenize_run(make_run(tmp_path, docs), config(), tokenizer=str(source))
    m = read_manifest(out)
    tok = Tokenizer.from_file(str(source))
    assert m.dtype == "uint16" and m.version == 1 and m.tokenizer.vocab_size == tok.get_vocab_size(True)
    assert m.tokenizer.sha256 == file_sha256(source) == file_sha256(out / "tokenizer.json")
    assert m.tokenizer.eod_token == ("<|endoftext|>" if rel == NEOX else "</s>")
    with ipc.open_file(pa.memory_map(str(out / m.shards[0].file))) as reader:
        assert reader.schema.field("tokens").type == pa.list_(pa.uint16())
        assert reader.num_record_batches == 1
    got = read_docs(out)
    assert len(got) == m.docs == len(docs) and sorted(d for d, _ in got) == sorted(d["id"] for d in docs)
    assert sum(len(t) for _, t in got) == m.tokens == sum(e.tokens for e in m.shards)
    assert sum(m.sources.values()) == m.tokens and set(m.sources) == {"wiki", "plays"}
    assert all(t[-1] == m.tokenizer.eod_id for _, t in got)
    assert all(e.version == 1 and e.sha256 == file_sha256(out / e.file) for e in m.shards)
    assert [v.model_dump() for v in m.versions] == [{"version": 1, "fingerprint": m.fingerprint,
                                                     "config_hash": m.config_hash,
                                                     "shards": [e.file for e in m.shards]}]
    on_disk = (out / "manifest.json").read_bytes()  # the JSON keys stay those Sluice always wrote
    assert set(json.loads(on_disk)) == {"format", "version", "fingerprint", "config_hash", "tokenizer", "dtype",
                                        "docs", "tokens", "sources", "versions", "shards"}


def test_tokenizing_reports_progress_in_documents_and_bytes(tmp_path, docs, shared_data, ray_cluster, caplog):
    """Without a TTY the pass logs its progress; its last line counts every document of the kept files."""
    run = make_run(tmp_path, docs)
    kept_bytes = sum(pq.ParquetFile(f).metadata.row_group(g).total_byte_size
                     for f in sorted((run / "kept").glob("*.parquet")) for g in range(pq.ParquetFile(f).num_row_groups))
    with caplog.at_level(logging.INFO, logger="sluice.progress"):
        tokenize_run(run, config(), tokenizer=str(shared_data / NEOX))
    done = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenize: done")]
    n = len(docs)
    assert len(done) == 1 and done[0].startswith(f"tokenize: done, {n:,}/{n:,} docs (100%), "
                                                 f"{kept_bytes / 1e6:,.1f}/{kept_bytes / 1e6:,.1f} MB")


def test_byte_level_bpe_shards_decode_to_the_documents_exactly(tmp_path, docs, shared_data, ray_cluster):
    out = tokenize_run(make_run(tmp_path, docs), config(), tokenizer=str(shared_data / NEOX))
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    text = {d["id"]: d["text"] for d in docs}
    for doc_id, tokens in read_docs(out):
        assert tok.decode(tokens[:-1].tolist(), skip_special_tokens=False) == text[doc_id]


def test_trained_bpe_is_reproducible_and_round_trips(tmp_path, shared_data, ray_cluster):
    plays = [p for p in (shared_data / "tinyshakespeare/input.txt").read_text().split("\n\n") if p.strip()][:400]
    docs = [{"id": f"s{i}", "text": t, "source": "plays", "url": None, "meta": None} for i, t in enumerate(plays)]
    first = tokenize_run(make_run(tmp_path / "a", docs), config())
    second = tokenize_run(make_run(tmp_path / "b", docs, parts=2), config())
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    m = read_manifest(first)
    assert m.tokenizer.trained and m.tokenizer.vocab_size == 600
    tok = Tokenizer.from_file(str(first / "tokenizer.json"))
    text = {d["id"]: d["text"] for d in docs}
    assert all(tok.decode(t[:-1].tolist()) == text[d] for d, t in read_docs(first))
    files = sorted((tmp_path / "a" / "kept").glob("*.parquet"))
    assert list(sample_texts(files, 50, seed=1)) != list(sample_texts(files, 50, seed=2))
    assert train_bpe(plays, 400, ["<|endoftext|>"]).to_str() == train_bpe(plays, 400, ["<|endoftext|>"]).to_str()


def test_bpe_trained_in_a_child_process_writes_the_bytes_one_process_would(tmp_path, shared_data):
    plays = [p for p in (shared_data / "tinyshakespeare/input.txt").read_text().split("\n\n") if p.strip()][:300]
    texts = plays + ["Ünïcödé, emoji 🙂, CJK 漢字 and an empty one next", ""]
    train_bpe(texts, 400, ["<|endoftext|>"]).save(str(tmp_path / "here.json"))
    apart = train_bpe_apart(iter(texts), 400, ["<|endoftext|>"], tmp_path / "apart.json")
    assert (tmp_path / "apart.json").read_bytes() == (tmp_path / "here.json").read_bytes()
    assert apart.decode(apart.encode(texts[-2]).ids) == texts[-2]


def test_a_bpe_child_that_fails_says_why(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with \d+:\n(.|\n)*No such file"):
        train_bpe_apart(["some text"], 300, [], tmp_path / "missing" / "tokenizer.json")


def test_vocabulary_above_65536_gives_uint32(tmp_path, ray_cluster):
    vocab = {f"w{i}": i for i in range(70_000)} | {"[UNK]": 70_000, "<|endoftext|>": 70_001}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    path = tmp_path / "big.json"
    tok.save(str(path))
    docs = [{"id": f"d{i}", "text": f"w{69_999 - i} w{i} w{65_536 + i}", "source": "synthetic", "url": None,
             "meta": None} for i in range(50)]
    out = tokenize_run(make_run(tmp_path / "run", docs), config(), tokenizer=str(path))
    assert read_manifest(out).dtype == "uint32"
    got = dict(read_docs(out))
    assert got["d7"].dtype == np.uint32 and got["d7"].tolist() == [69_992, 7, 65_543, 70_001]


def test_same_bytes_whatever_parallelism(tmp_path, docs, shared_data, ray_cluster):
    """Many Ray tasks on the 2-CPU session cluster == one block in a separate 1-CPU Ray cluster."""
    tokenizer = str(shared_data / NEOX)
    many = tokenize_run(make_run(tmp_path / "many", docs), config(), tokenizer=tokenizer, in_flight=3)
    make_run(tmp_path / "one", docs)
    script = ("import sys; from pathlib import Path; from pipeline.config import SluiceConfig;"
              "from pipeline.runtime import start_ray; from stages.tokenize import tokenize_run;"
              "cfg = SluiceConfig.model_validate({'ray': {'num_cpus': 1, 'dashboard': False},"
              "'shard': {'tokens_per_shard': 20000}, 'tokenize': {'vocab_size': 600, 'train_sample_docs': 200}});"
              "start_ray(cfg.ray); tokenize_run(Path(sys.argv[1]), cfg, tokenizer=sys.argv[2], in_flight=1)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "one"), tokenizer], check=True, cwd=ROOT, env=env,
                   timeout=300)
    one = tmp_path / "one" / "shards"
    assert len(read_manifest(many).shards) > 1
    assert folder_bytes(many) == folder_bytes(one)


def shard_ids(shard_dir: Path) -> list[list[str]]:
    """The document ids of each shard, in shard order."""
    return [[d for b in open_shard(shard_dir, e) for d in b.column("doc_id").to_pylist()]
            for e in read_manifest(shard_dir).shards]


def reference_shards(run: Path, lengths: dict[str, int], cfg: SluiceConfig) -> list[list[str]]:
    """The documented order and cut rule, the slow obvious way in one process: every document of the
    run sorted by (key, position), each put in shard floor(start offset / tokens_per_shard)."""
    rows = []
    for f_index, f in enumerate(sorted((run / "kept").glob("part-*.parquet"))):  # one row group a file here
        t = pq.read_table(f, columns=["id", "source"])
        keys = hash_keys(t["id"], t["source"], cfg.shard.seed)
        rows += [(int(k) if cfg.shard.shuffle else 0, (f_index << 32) + r, i) for r, (k, i) in
                 enumerate(zip(keys, t["id"].to_pylist()))]
    shards: dict[int, list[str]] = {}
    start = 0
    for _, _, doc_id in sorted(rows):
        shards.setdefault(start // cfg.shard.tokens_per_shard, []).append(doc_id)
        start += lengths[doc_id]
    return list(shards.values())


def test_shards_are_the_documented_cut_of_the_seeded_order(tmp_path, docs, shared_data, ray_cluster):
    tokenizer = str(shared_data / NEOX)
    run = make_run(tmp_path, docs)
    orders = []
    for cfg in (config(tokens_per_shard=5_000), config(tokens_per_shard=5_000, shuffle=False),
                config(tokens_per_shard=5_000, seed=1)):
        out = tokenize_run(run, cfg, tokenizer=tokenizer)
        lengths = {d: len(t) for d, t in read_docs(out)}
        got = shard_ids(out)
        assert got == reference_shards(run, lengths, cfg) and len(got) > 3
        m = read_manifest(out)
        assert [e.file for e in m.shards] == [f"shard-{i:05d}.arrow" for i in range(len(m.shards))]
        assert all(abs(e.tokens - 5_000) < max(lengths.values()) for e in m.shards[:-1])
        orders.append([d for shard in got for d in shard])
    shuffled, stable, reseeded = orders
    files = sorted((run / "kept").glob("*.parquet"))
    assert stable == [i for f in files for i in pq.read_table(f)["id"].to_pylist()]
    assert sorted(shuffled) == sorted(stable) == sorted(reseeded)
    assert len({tuple(shuffled), tuple(stable), tuple(reseeded)}) == 3


def test_long_and_empty_documents_skip_windows_and_lose_nothing(tmp_path, ray_cluster):
    """Documents longer than a shard window leave windows no document starts in; documents of zero
    tokens (empty text, no end-of-document token) still travel."""
    words = {f"w{i}": i for i in range(100)} | {"[UNK]": 100}
    tok = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "words.json"))
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{j}" for j in rng.integers(0, 100, n)) for n in rng.integers(0, 40, 40)]
    docs = [{"id": f"d{i}", "text": t, "source": "words", "url": None, "meta": None} for i, t in enumerate(texts)]
    run = make_run(tmp_path / "run", docs)
    for shuffle in (True, False):
        cfg = config(tokens_per_shard=12, eod_token=None, shuffle=shuffle)
        out = tokenize_run(run, cfg, tokenizer=str(tmp_path / "words.json"))
        lengths = {d: len(t) for d, t in read_docs(out)}
        assert sorted(lengths) == sorted(d["id"] for d in docs) and 0 in lengths.values()
        assert shard_ids(out) == reference_shards(run, lengths, cfg)
        assert len(read_manifest(out).shards) < sum(lengths.values()) // 12  # windows were skipped


def test_rerun_skips_finished_shards_and_rebuilds_on_change(tmp_path, docs, shared_data, ray_cluster):
    run = make_run(tmp_path, docs)
    tokenizer = str(shared_data / NEOX)
    out = tokenize_run(run, config(), tokenizer=tokenizer)
    stale = run / ".shards.tmp-deadbeef"  # what a killed run leaves behind
    stale.mkdir()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert tokenize_run(run, config(), tokenizer=tokenizer) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    m1 = read_manifest(out)
    tokenize_run(run, config(tokens_per_shard=7_000), tokenizer=tokenizer)
    m2 = read_manifest(out)
    assert m2.fingerprint != m1.fingerprint and m2.config_hash != m1.config_hash
    assert not stale.exists() and not list(run.glob(".shards.*"))
    assert {p.name for p in out.iterdir()} == {"manifest.json", "tokenizer.json"} | {e.file for e in m2.shards}


def test_end_of_document_token_resolution(shared_data):
    llama = Tokenizer.from_file(str(shared_data / LLAMA))
    assert resolve_eod(llama, "auto") == ("</s>", 2)
    assert resolve_eod(llama, "<s>") == ("<s>", 1)
    assert resolve_eod(llama, None) == (None, None)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        resolve_eod(llama, "<|endoftext|>")
    plain = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="auto"):
        resolve_eod(plain, "auto")


def test_inspect_and_corruption_name_the_shard(tmp_path, docs, shared_data, ray_cluster):
    out = tokenize_run(make_run(tmp_path, docs), config(), tokenizer=str(shared_data / NEOX))
    report = inspect_shards(out)
    m = read_manifest(out)
    first_id, first_tokens = read_docs(out)[0]
    decoded = Tokenizer.from_file(str(out / "tokenizer.json")).decode(first_tokens.tolist())
    assert "shard-00000.arrow" in report and "tokens per document" in report and f"{m.tokens:,} tokens" in report
    assert first_id in report and decoded[:40] in report.replace("\\n", "\n")
    shown = CliRunner().invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "shard-00000.arrow" in shown.output and first_id in shown.output
    manifest = json.loads((out / "manifest.json").read_text())
    escaping = tmp_path / "escaping"
    escaping.mkdir()
    manifest["shards"][0]["file"] = "../../shard-00000.arrow"
    (escaping / "manifest.json").write_text(json.dumps(manifest))
    refused = CliRunner().invoke(app, ["inspect", str(escaping)])
    assert refused.exit_code == 2 and "escapes its root" in " ".join(refused.output.split())
    victim = out / m.shards[1].file
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-00001.arrow is corrupt: sha256"):
        read_docs(out)
    victim.unlink()
    with pytest.raises(ShardError, match="shard-00001.arrow is missing"):
        inspect_shards(out)
    assert json.loads((out / "manifest.json").read_text())["shards"][1]["file"] == "shard-00001.arrow"


def two_batches(root: Path, docs: list[dict]) -> tuple[Path, Path]:
    """Two curated runs of different documents, as two scheduled runs leave them."""
    return make_run(root / "batch1", docs[::2]), make_run(root / "batch2", docs[1::2], parts=2)


def test_append_adds_a_version_and_never_rewrites_old_shards(tmp_path, docs, ray_cluster):
    """A trained BPE: version 1 trains it, version 2 must reuse the folder's copy."""
    cfg = config(tokens_per_shard=5_000)
    batch1, batch2 = two_batches(tmp_path, docs)
    corpus = tmp_path / "corpus"
    m1 = append_shards(batch1, corpus, cfg)
    assert m1.version == 1 and folder_bytes(corpus) == folder_bytes(tokenize_run(batch1, cfg))
    v1_loader, _ = open_loaders(corpus, 16, 4, val_fraction=0.1)
    v1_state = v1_loader.state_dict()
    before = folder_bytes(corpus)

    m2 = append_shards(batch2, corpus, cfg)
    after = folder_bytes(corpus)
    new = m2.shards[len(m1.shards):]
    assert m2.version == 2 and m2.shards[:len(m1.shards)] == m1.shards and new
    assert all(after[name] == data for name, data in before.items() if name != "manifest.json")
    assert [e.file for e in m2.shards] == [f"shard-{i:05d}.arrow" for i in range(len(m2.shards))]
    assert {e.version for e in new} == {2} and m2.versions[0] == m1.versions[0]
    assert m2.versions[1].shards == [e.file for e in new] and m2.fingerprint != m1.fingerprint
    assert m2.docs == len(docs) and m2.tokens == m1.tokens + sum(e.tokens for e in new)
    assert sum(m2.sources.values()) == m2.tokens and m2.tokenizer == m1.tokenizer
    assert set(after) == {"manifest.json", "tokenizer.json"} | {e.file for e in m2.shards}
    assert read_manifest(corpus) == m2

    tok = Tokenizer.from_file(str(corpus / "tokenizer.json"))
    text = {d["id"]: d["text"] for d in docs}
    got = read_docs(corpus)
    added = got[m1.docs:]
    assert sorted(d for d, _ in added) == sorted(d["id"] for d in docs[1::2])
    assert all(t[-1] == m1.tokenizer.eod_id and tok.decode(t[:-1].tolist()) == text[d] for d, t in added)

    for batch in (batch2, batch1):  # a batch already in the folder is not added again
        assert append_shards(batch, corpus, cfg) == m2
    assert folder_bytes(corpus) == after

    train, val = open_loaders(corpus, 16, 4, val_fraction=0.1)
    assert train.stream.total == m2.tokens == sum(len(t) for _, t in got)
    assert len(train.stream.pieces) == len(m2.shards) and train.num_samples > v1_loader.num_samples
    v1_state["epoch"], v1_state["step"] = 3, 5
    with pytest.raises(NewShardVersion, match="version 1 .* now version 2"):
        train.load_state_dict(v1_state)
    train.load_state_dict(v1_state, on_new_version="next_epoch")
    assert (train.epoch, train.step) == (4, 0)
    with pytest.raises(ValueError, match="other shards"):
        train.load_state_dict(v1_state | {"fingerprint": "0" * 16}, on_new_version="next_epoch")


def test_killed_append_retried_equals_a_clean_append(tmp_path, docs, shared_data, ray_cluster):
    """Orphans of a killed append are replaced, and Ray parallelism does not change a byte."""
    cfg = config(tokens_per_shard=5_000, tokenizer=str(shared_data / NEOX))
    batch1, batch2 = two_batches(tmp_path, docs)
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    append_shards(batch1, clean, cfg, in_flight=3)
    append_shards(batch2, clean, cfg, in_flight=3)
    crashed.mkdir()
    (crashed / "shard-00003.arrow").write_bytes(b"killed before the manifest")  # a first attempt died too
    first = append_shards(batch1, crashed, cfg, in_flight=1)
    n = len(first.shards)
    for orphan in (f"shard-{n:05d}.arrow", f"shard-{n + 40:05d}.arrow", f".shard-{n + 1:05d}.arrow.tmp-dead"):
        (crashed / orphan).write_bytes(b"half-written by a killed append")
    append_shards(batch2, crashed, cfg, in_flight=1)
    assert read_manifest(crashed).version == 2 and folder_bytes(crashed) == folder_bytes(clean)

    other = config(tokens_per_shard=5_000, tokenizer=str(shared_data / LLAMA))
    with pytest.raises(ValueError, match="not the tokenizer of"):
        append_shards(batch2, clean, other)
    with pytest.raises(ValueError, match="end-of-document"):
        append_shards(batch2, clean, config(tokens_per_shard=5_000, tokenizer=str(shared_data / NEOX), eod_token=None))


@pytest.mark.parametrize("tokens_per_shard", [3, 5, 100])
def test_window_documents_equal_arrow_sort_and_take_on_sliced_files(tokens_per_shard):
    """The shard writer's own gather (whole token runs copied file by file, no per-token index) gives
    exactly Arrow's sort and take, from slices of larger arrays, as scratch files are read."""
    lists = pa.array([[1, 2], [], [3, 4, 5], [6], [7, 8], [9], [10, 11, 12]], pa.list_(pa.uint16()))
    table = pa.table({"doc_id": [str(i) for i in range(7)], "tokens": lists,
                      "key": pa.array([5, 1, 4, 2, 6, 3, 0], pa.uint64())})
    slices = [table.slice(1, 3), table.slice(4, 3)]
    everything = pa.concat_tables(slices).sort_by("key")
    lengths = pc.list_value_length(everything["tokens"]).to_numpy()
    starts = np.cumsum(lengths) - lengths
    for index in sorted(set((starts // tokens_per_shard).tolist())):
        window = ShardWindow(index, 0, 0, 0)
        got = window_documents(lambda: iter(slices), window, tokens_per_shard, ["key"])
        assert got.equals(everything.filter(pa.array(starts // tokens_per_shard == index)))


