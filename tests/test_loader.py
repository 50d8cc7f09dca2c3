"""The shard loader: zero-copy views, exact resume, rank splits, held-out validation, manifest checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from tokenizers import Tokenizer

from pipeline.manifest import (ManifestVersion, ShardError, ShardManifest, TokenizerInfo, read_manifest,
                               write_manifest)
from pipeline.shardfile import file_sha256, shard_name, write_shard
from stages.shard import shard_of
from stages.tokenize import tokenize_docs
from stages.train.data import ShardLoader, TokenStream, open_loaders

SEQ, BATCH = 16, 4


def write_shard_dir(out: Path, shared: Path, tokens_per_shard: int = 3_000) -> Path:
    """Real shards without Ray: Shakespeare scenes tokenized by the GPT-NeoX tokenizer, cut small."""
    source = shared / "tokenizers/dolma_gpt-neo-test-tokenizer.json"
    tokenizer = Tokenizer.from_file(str(source))
    scenes = [s for s in (shared / "tinyshakespeare/input.txt").read_text().split("\n\n") if s.strip()][:600]
    docs = pa.table({"id": [f"s{i}" for i in range(len(scenes))], "text": scenes, "source": ["plays"] * len(scenes)})
    out.mkdir(parents=True)
    tokenized = tokenize_docs(tokenizer, docs, eod_id=50279, dtype=np.dtype(np.uint16))
    lengths = pc.list_value_length(tokenized["tokens"]).to_numpy()
    window = shard_of(np.cumsum(lengths) - lengths, tokens_per_shard)
    entries = [write_shard(out / shard_name(i), tokenized.filter(pa.array(window == w)), 1, np.dtype(np.uint16))
               for i, w in enumerate(np.unique(window))]
    (out / "tokenizer.json").write_bytes(source.read_bytes())
    tok = TokenizerInfo(file="tokenizer.json", sha256=file_sha256(source), vocab_size=50280,
                        eod_token="<|endoftext|>", eod_id=50279, trained=False)
    write_manifest(out, ShardManifest.first(entries, fingerprint="f" * 16, config_hash="c" * 16, tokenizer=tok,
                                            dtype="uint16"))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory, shared_data) -> Path:
    return write_shard_dir(tmp_path_factory.mktemp("loader") / "shards", shared_data)


def all_tokens(shard_dir: Path) -> np.ndarray:
    stream = TokenStream(shard_dir)
    return np.concatenate(stream.pieces)


def take(loader: ShardLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_views_are_memory_mapped_and_windows_cross_shards(shards):
    stream = TokenStream(shards, verify="sha256")
    assert len(stream.pieces) > 3 and all(not p.flags.owndata and not p.flags.writeable for p in stream.pieces)
    flat = np.concatenate(stream.pieces)
    assert flat[-1] == 50279 and stream.total == len(flat)
    assert stream.total == json.loads((shards / "manifest.json").read_text())["tokens"]
    boundary = int(stream.starts[2])
    assert np.array_equal(stream.read(boundary - 5, 3_100), flat[boundary - 5:boundary + 3_095])
    assert np.shares_memory(stream.read(boundary, 10), stream.pieces[2])


def test_batches_are_shifted_windows_of_the_stream(shards):
    loader = ShardLoader(TokenStream(shards), SEQ, BATCH, seed=3)
    flat = all_tokens(shards)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (BATCH, SEQ) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    first = int(loader.order(0)[0])
    assert np.array_equal(x[0].numpy(), flat[first * SEQ:first * SEQ + SEQ])
    assert loader.num_samples == (len(flat) - 1) // SEQ


def test_order_is_a_pure_function_of_seed_and_epoch(shards):
    stream = TokenStream(shards)
    a, b = ShardLoader(stream, SEQ, BATCH, seed=1), ShardLoader(stream, SEQ, BATCH, seed=1)
    assert np.array_equal(a.order(5), b.order(5))
    assert not np.array_equal(a.order(5), a.order(6))
    assert not np.array_equal(a.order(5), ShardLoader(stream, SEQ, BATCH, seed=2).order(5))
    assert sorted(a.order(5)) == list(range(a.num_samples))


@pytest.mark.parametrize("where", ["start", "mid_epoch", "next_epoch"])
def test_resume_from_state_gives_the_same_batches(shards, where):
    stream = TokenStream(shards)
    bpe = ShardLoader(stream, 64, 32, seed=7).batches_per_epoch
    n = 2 * bpe + 5  # crosses two epoch boundaries
    k = {"start": 0, "mid_epoch": 3, "next_epoch": bpe + 2}[where]
    straight = take(ShardLoader(stream, 64, 32, seed=7), n)
    first = ShardLoader(stream, 64, 32, seed=7)
    head = take(first, k)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
    resumed = ShardLoader(TokenStream(shards), 64, 32, seed=7)
    resumed.load_state_dict(state)
    tail = take(resumed, n - k)
    assert len(straight) == len(head + tail)
    for (x1, y1), (x2, y2) in zip(straight, head + tail):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_state_of_another_loader_is_refused(shards):
    stream = TokenStream(shards)
    state = ShardLoader(stream, SEQ, BATCH, seed=1).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        ShardLoader(stream, SEQ * 2, BATCH, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="world_size"):
        ShardLoader(stream, SEQ, BATCH, seed=1, world_size=2).load_state_dict(state)


def test_two_ranks_see_every_sample_of_an_epoch_once(shards):
    stream = TokenStream(shards)
    world, steps = 2, 9
    hi = world * BATCH * steps * SEQ + 1  # exactly world * BATCH * steps windows
    ranks = [ShardLoader(stream, SEQ, BATCH, token_range=(0, hi), rank=r, world_size=world, seed=4, as_torch=False)
             for r in range(world)]
    assert [len(r) for r in ranks] == [steps, steps]
    seen = [tuple(x[i]) + (y[i, -1],) for r in ranks for x, y in r.epoch_batches(0) for i in range(BATCH)]
    expected = [tuple(ranks[0].sample(i)) for i in range(ranks[0].num_samples)]
    assert sorted(seen) == sorted(expected) and len(seen) == len(expected)
    uneven = [ShardLoader(stream, SEQ, 3, rank=r, world_size=world, as_torch=False) for r in range(world)]
    assert len(uneven[0]) == len(uneven[1]) == uneven[0].num_samples // 6
    ids = [set(np.concatenate([u.batch_indices(u.order(0), s) for s in range(len(u))])) for u in uneven]
    assert not ids[0] & ids[1]


def test_validation_is_held_out(shards):
    train, val = open_loaders(shards, SEQ, BATCH, seed=0, val_fraction=0.1, as_torch=False)
    assert train.hi == val.lo and val.hi == train.stream.total and val.shuffle is False and len(val) > 0
    assert abs((val.hi - val.lo) - train.stream.total * 0.1) < 1
    last_train = train.lo + (train.num_samples - 1) * SEQ + SEQ + 1
    assert last_train <= val.lo
    batches = list(val.epoch_batches())
    assert len(batches) == len(val) and batches[0][0].shape == (BATCH, SEQ)
    assert np.array_equal(batches[0][0][0], train.stream.read(val.lo, SEQ))
    with pytest.raises(ValueError, match="fill no batch"):
        open_loaders(shards, 4_000, 64)


def test_manifest_problems_are_named(tmp_path, shared_data):
    shards = write_shard_dir(tmp_path / "shards", shared_data)
    manifest = json.loads((shards / "manifest.json").read_text())
    victim = shards / "shard-00002.arrow"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a token value: same size, so only the checksum sees it
    victim.write_bytes(bytes(data))
    TokenStream(shards, verify="size")
    with pytest.raises(ShardError, match="shard-00002.arrow is corrupt: sha256"):
        TokenStream(shards, verify="sha256")
    victim.write_bytes(bytes(data[:-10]))
    with pytest.raises(ShardError, match="shard-00002.arrow is corrupt: .* bytes"):
        TokenStream(shards)
    victim.unlink()
    with pytest.raises(ShardError, match="shard-00002.arrow is missing"):
        TokenStream(shards)
    manifest["shards"][2]["file"] = "../../outside.arrow"
    (shards / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="escapes its root"):
        TokenStream(shards)


def test_manifest_is_typed_and_byte_stable(shards, tmp_path):
    """Read, write, read again: the same model and the same bytes; versions chain their fingerprints."""
    m = read_manifest(shards)
    assert isinstance(m, ShardManifest) and m.tokens == sum(e.tokens for e in m.shards) and m.docs == 600
    assert m.versions == [ManifestVersion(version=1, fingerprint="f" * 16, config_hash="c" * 16,
                                          shards=[e.file for e in m.shards])]
    write_manifest(tmp_path, m)
    assert (tmp_path / "manifest.json").read_bytes() == (shards / "manifest.json").read_bytes()
    assert read_manifest(tmp_path) == m
    text = (shards / "manifest.json").read_text()
    assert list(json.loads(text)) == sorted(json.loads(text)) and text.endswith("}\n")
    grown = m.extend(m.shards[:1], fingerprint="g" * 16, config_hash="c" * 16)
    assert grown.version == 2 and grown.tokens == m.tokens + m.shards[0].tokens and grown.holds("g" * 16)
    assert grown.fingerprint not in (m.fingerprint, "g" * 16) and grown.has_ancestor(1, m.fingerprint)
    assert not grown.has_ancestor(2, m.fingerprint) and not grown.has_ancestor(1, "0" * 16)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["shards"][0].update(path=m["shards"][0].pop("file")), r"shards\.0\.file: Field required"),
    (lambda m: m.update(extra=1), r"extra: Extra inputs are not permitted"),
    (lambda m: m["tokenizer"].update(vocab_size="many"), r"tokenizer\.vocab_size"),
    (lambda m: m.update(format="other/2"), r"unknown format 'other/2'"),
])
def test_malformed_manifests_are_named(shards, tmp_path, change, message):
    manifest = json.loads((shards / "manifest.json").read_text())
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShardError, match=rf"{tmp_path / 'manifest.json'}: .*{message}"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ShardError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)
