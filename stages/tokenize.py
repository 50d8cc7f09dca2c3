"""Tokenize a curated run into token shards: RUN/kept/*.parquet -> RUN/shards/.

The tokenizer is a Hugging Face `tokenizer.json` given by path, or a byte-level BPE trained on a
seeded sample of the curated documents. Ray Data encodes batches of documents with `encode_batch`;
the driver orders them by a seeded hash of their id (or keeps the run's order) and streams them into
shards. Ordering by keys that depend only on the documents is what makes the bytes independent of
block, batch and worker counts. The shard folder is built under a temporary name and
renamed into place, so a rerun either skips it (same fingerprint) or rebuilds it whole.

`append_shards` is the incremental path: a later curated batch becomes the folder's next manifest
version, in new shards after the existing ones, with the folder's own tokenizer.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from itertools import chain
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import xxhash
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from pipeline.config import SluiceConfig, TokenizeConfig
from pipeline.runtime import start_ray
from stages.shard import (FORMAT, MANIFEST, SHARD_GLOB, TOKENIZER_FILE, ShardError, ShardWriter, build_manifest,
                          extend_manifest, file_sha256, read_manifest, token_dtype, write_manifest)

log = logging.getLogger("sluice")

DEFAULT_EOD = "<|endoftext|>"
# End-of-text tokens of common tokenizer families, tried in order when eod_token is "auto".
KNOWN_EOD = (DEFAULT_EOD, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
SORT_KEY = "_order"  # seeded hash of the document id
POSITION = "_position"  # (piece << 32) + row: the run's own order, and the tie-break of equal hashes
TAKE_SLICE = 65_536  # documents reordered at a time
ENCODE_BATCH = 1024  # documents per encode_batch call: keeps the Rust threads busy, bounds Encoding memory


def train_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE (GPT-2 style): every string is encodable and decodes back exactly."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def sample_texts(files: list[Path], n: int, seed: int) -> list[str]:
    """The `n` documents with the smallest seeded hash of their id: the same sample however files are cut."""
    keyed = []
    for f in files:
        ids = pq.read_table(f, columns=["id"])["id"].to_pylist()
        keyed += [(xxhash.xxh64_intdigest(i.encode(), seed), i) for i in ids]
    chosen = sorted(keyed)[:n]
    rank = {i: pos for pos, (_, i) in enumerate(chosen)}
    picked: list[tuple[int, str]] = []
    for f in files:
        t = pq.read_table(f, columns=["id", "text"])
        t = t.filter(pc.is_in(t["id"], pa.array(list(rank), pa.string())))
        picked += [(rank[i], text or "") for i, text in zip(t["id"].to_pylist(), t["text"].to_pylist())]
    return [text for _, text in sorted(picked)]


def resolve_eod(tokenizer: Tokenizer, eod_token: str | None) -> tuple[str | None, int | None]:
    """The end-of-document token and id; 'auto' picks the tokenizer's own, a named one must exist."""
    if eod_token is None:
        return None, None
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    if eod_token == "auto":
        found = next((t for t in KNOWN_EOD if t in vocab), None)
        if found is None:
            raise ValueError(f"tokenize.eod_token is 'auto' but the tokenizer has none of {KNOWN_EOD}; "
                             "name one of its tokens, or set null for no end-of-document token")
        return found, vocab[found]
    if eod_token not in vocab:
        raise ValueError(f"tokenize.eod_token {eod_token!r} is not in the tokenizer's vocabulary")
    return eod_token, vocab[eod_token]


@functools.lru_cache(maxsize=2)
def _tokenizer_from_json(data: str) -> Tokenizer:
    """One tokenizer per Ray worker process, not one per batch."""
    return Tokenizer.from_str(data)


def encode_docs(tokenizer: Tokenizer, texts: list[str], eod_id: int | None, dtype: np.dtype) -> pa.ListArray:
    """Encode documents in one `encode_batch` call into an Arrow list column, with EOD appended."""
    ids = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    flat = np.fromiter(chain.from_iterable(ids), dtype, int(lengths.sum()))
    extra = 0 if eod_id is None else 1
    offsets = np.zeros(len(ids) + 1, np.int32)
    np.cumsum(lengths + extra, out=offsets[1:])
    if eod_id is None:
        values = flat
    else:
        values = np.empty(offsets[-1], dtype)
        is_eod = np.zeros(offsets[-1], bool)
        is_eod[offsets[1:] - 1] = True
        values[is_eod] = eod_id
        values[~is_eod] = flat
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def tokenize_docs(tokenizer: Tokenizer, docs: pa.Table, eod_id: int | None, dtype: np.dtype,
                  seed: int, first_position: int) -> pa.Table:
    """Curated documents in; doc_id, source, tokens, a seeded shuffle key and the input position out."""
    ids = docs["id"].cast(pa.string())
    columns = {
        "doc_id": ids,
        "source": docs["source"].cast(pa.string()),
        SORT_KEY: pa.array([xxhash.xxh64_intdigest(i.encode(), seed) for i in ids.to_pylist()], pa.uint64()),
        POSITION: pa.array(np.arange(first_position, first_position + docs.num_rows, dtype=np.int64)),
    }
    columns["tokens"] = encode_docs(tokenizer, [t or "" for t in docs["text"].to_pylist()], eod_id, dtype)
    return pa.table(columns)


def make_tokenize_task(tokenizer_json: str, eod_id: int | None, dtype: np.dtype, seed: int):
    """The Ray Data function: one (path, row group) piece of the curated run in, its tokenized documents out."""

    def tokenize(pieces: pa.Table) -> pa.Table:
        tokenizer = _tokenizer_from_json(tokenizer_json)
        out = []
        for path, group, piece in zip(*(pieces[c].to_pylist() for c in ("path", "row_group", "piece"))):
            docs = pq.ParquetFile(path).read_row_group(group, columns=["id", "text", "source"])
            out += [tokenize_docs(tokenizer, docs.slice(i, ENCODE_BATCH), eod_id, dtype, seed, (piece << 32) + i)
                    for i in range(0, max(docs.num_rows, 1), ENCODE_BATCH)]
        return pa.concat_tables(out)

    return tokenize


def input_hash(files: list[Path]) -> str:
    """Identity of the curated documents, so changed inputs invalidate finished shards."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}\0{file_sha256(f)}\n".encode())
    return digest.hexdigest()[:16]


def shard_fingerprint(config: SluiceConfig, files: list[Path], tokenizer_path: str | None) -> str:
    data = {
        "format": FORMAT,
        "config": config.section_hash("tokenize", "shard"),
        "inputs": input_hash(files),
        "tokenizer": file_sha256(Path(tokenizer_path)) if tokenizer_path else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def prepare_tokenizer(cfg: TokenizeConfig, files: list[Path], tokenizer_path: str | None, out: Path) -> Tokenizer:
    """Load or train the tokenizer, and place its exact bytes in the shard folder."""
    target = out / TOKENIZER_FILE
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, target)
        return Tokenizer.from_file(str(target))
    specials = [DEFAULT_EOD if cfg.eod_token in (None, "auto") else cfg.eod_token]
    log.info("tokenize: training a byte-level BPE (vocab %d) on up to %d documents", cfg.vocab_size,
             cfg.train_sample_docs)
    tokenizer = train_bpe(sample_texts(files, cfg.train_sample_docs, cfg.seed), cfg.vocab_size, specials)
    tokenizer.save(str(target))
    return tokenizer


def ordered_documents(files: list[Path], task, shuffle: bool, blocks: int | None) -> Iterator[pa.Table]:
    """Tokenized documents in their final order: by seeded hash, or the run's own (file, row) order.

    Ray Data tokenizes; blocks arrive in any order and the driver sorts them by keys that depend on
    the documents alone. The driver so holds the tokenized run (2 or 4 bytes a token, read zero-copy
    from the local object store); taking in sorted slices keeps the extra copy slice-sized.
    """
    pieces = [{"path": str(f), "row_group": g} for f in files for g in range(pq.ParquetFile(f).num_row_groups)]
    if not pieces:
        return
    pieces = [dict(p, piece=i) for i, p in enumerate(pieces)]
    ds = ray.data.from_items(pieces, override_num_blocks=min(blocks or len(pieces), len(pieces)))
    ds = ds.map_batches(task, batch_format="pyarrow", batch_size=1)
    batches = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    if not batches:
        return
    docs = pa.concat_tables(batches)
    keys = [(SORT_KEY, "ascending"), (POSITION, "ascending")] if shuffle else [(POSITION, "ascending")]
    order = pc.sort_indices(docs.select([k for k, _ in keys]), sort_keys=keys)
    for start in range(0, len(order), TAKE_SLICE):
        yield docs.take(order[start:start + TAKE_SLICE])


def encode_into_shards(files: list[Path], config: SluiceConfig, tokenizer: Tokenizer, out: Path,
                       eod_id: int | None, dtype: np.dtype, version: int, first_index: int = 0,
                       blocks: int | None = None) -> list[dict]:
    """Tokenize on Ray Data, order the documents, stream them into shards; return their manifest entries."""
    scfg = config.shard
    task = make_tokenize_task(tokenizer.to_str(), eod_id, dtype, scfg.seed)
    writer = ShardWriter(out, dtype, scfg.tokens_per_shard, version=version, first_index=first_index)
    for batch in ordered_documents(files, task, scfg.shuffle, blocks):
        writer.add(batch)
    return writer.close()


def write_shards(files: list[Path], config: SluiceConfig, tokenizer: Tokenizer, out: Path,
                 fingerprint: str, trained: bool, blocks: int | None = None) -> dict:
    """Version 1 of a shard folder: every document of `files`; return the manifest."""
    eod_token, eod_id = resolve_eod(tokenizer, config.tokenize.eod_token)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    entries = encode_into_shards(files, config, tokenizer, out, eod_id, dtype, version=1, blocks=blocks)
    tok_info = {"file": TOKENIZER_FILE, "sha256": file_sha256(out / TOKENIZER_FILE), "vocab_size": vocab_size,
                "eod_token": eod_token, "eod_id": eod_id, "trained": trained}
    return build_manifest(entries, version=1, fingerprint=fingerprint,
                          config_hash=config.section_hash("tokenize", "shard"), tokenizer=tok_info, dtype=dtype)


def finished_fingerprint(shard_dir: Path) -> str | None:
    """The fingerprint of a finished shard folder; None when absent or unreadable (then rebuilt)."""
    try:
        return read_manifest(shard_dir).get("fingerprint")
    except (ShardError, ValueError):
        return None


def kept_files(run: Path) -> list[Path]:
    files = sorted((run / "kept").glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{run}/kept has no parquet files: not a curated run")
    return files


def configured_tokenizer(config: SluiceConfig, tokenizer: str | None = None) -> str | None:
    path = tokenizer or config.tokenize.tokenizer
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return path


def build_shard_folder(files: list[Path], config: SluiceConfig, tokenizer_path: str | None, final: Path,
                       fingerprint: str, blocks: int | None) -> dict:
    """Build version 1 in a temporary sibling of `final`, manifest last, then rename it into place."""
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    start_ray(config.ray)
    tok = prepare_tokenizer(config.tokenize, files, tokenizer_path, tmp)
    manifest = write_shards(files, config, tok, tmp, fingerprint, trained=not tokenizer_path, blocks=blocks)
    write_manifest(tmp, manifest)
    if final.exists():
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.replace(tmp, final)
    log.info("tokenize: %d docs, %d tokens in %d shards -> %s", manifest["docs"], manifest["tokens"],
             len(manifest["shards"]), final)
    return manifest


def tokenize_run(run_dir: str | Path, config: SluiceConfig, tokenizer: str | None = None,
                 blocks: int | None = None) -> Path:
    """Tokenize RUN/kept into RUN/shards (skipped when finished with the same fingerprint); return it.

    `blocks` sets Ray Data's parallelism (default: one block per parquet row group); it never changes the output.
    """
    run = Path(run_dir)
    files = kept_files(run)
    tokenizer_path = configured_tokenizer(config, tokenizer)
    fingerprint = shard_fingerprint(config, files, tokenizer_path)
    final = run / "shards"
    if finished_fingerprint(final) == fingerprint:
        log.info("tokenize: %s finished earlier with the same fingerprint, skipped", final)
        return final
    build_shard_folder(files, config, tokenizer_path, final, fingerprint, blocks)
    return final


@contextlib.contextmanager
def exclusive(shard_dir: Path) -> Iterator[None]:
    """One writer per shard folder: overlapping scheduled runs wait for each other instead of interleaving."""
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(shard_dir.parent / f".{shard_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_unlisted(shard_dir: Path, manifest: dict) -> None:
    """Delete what a killed append left: shard files the manifest does not list and temporary files."""
    listed = {e["file"] for e in manifest["shards"]}
    for path in chain(shard_dir.glob(SHARD_GLOB), shard_dir.glob(".*.tmp-*")):
        if path.name not in listed:
            path.unlink()


def check_folder_tokenizer(shard_dir: Path, manifest: dict, config: SluiceConfig, tokenizer: Tokenizer) -> None:
    """An append must encode exactly as the earlier versions did: same tokenizer bytes, same end-of-document."""
    tok = manifest["tokenizer"]
    if file_sha256(shard_dir / TOKENIZER_FILE) != tok["sha256"]:
        raise ShardError(f"{shard_dir / TOKENIZER_FILE} differs from the sha256 in its manifest")
    configured = configured_tokenizer(config)
    if configured and file_sha256(Path(configured)) != tok["sha256"]:
        raise ValueError(f"tokenize.tokenizer {configured} is not the tokenizer of {shard_dir}; "
                         "a shard folder has one tokenizer: append to a new shard folder instead")
    eod = resolve_eod(tokenizer, config.tokenize.eod_token)
    if eod != (tok["eod_token"], tok["eod_id"]):
        raise ValueError(f"tokenize.eod_token resolves to {eod[0]!r} but {shard_dir} ends documents with "
                         f"{tok['eod_token']!r}; keep the folder's end-of-document token")


def append_shards(run_dir: str | Path, shard_dir: str | Path, config: SluiceConfig,
                  blocks: int | None = None) -> dict:
    """Add RUN/kept as the next version of `shard_dir` and return the manifest (the new one, or the current one).

    New documents go into new shards numbered after the existing ones, encoded with the folder's own
    tokenizer, end-of-document token and dtype; existing shards are never touched, so readers of the old
    manifest keep working. Each shard is written atomically and the manifest last, so a killed append
    leaves only unlisted files, which the retry removes before writing the same bytes again. A batch
    whose fingerprint (its kept files, the tokenize + shard config, the configured tokenizer: the same
    as `tokenize_run`'s) is already one of the versions is not added again. Without a manifest,
    `shard_dir` is built as version 1, exactly as `tokenize_run` builds RUN/shards.
    """
    run, out = Path(run_dir), Path(shard_dir)
    files = kept_files(run)
    tokenizer_path = configured_tokenizer(config)
    fingerprint = shard_fingerprint(config, files, tokenizer_path)
    with exclusive(out):
        if not (out / MANIFEST).is_file():
            strangers = [p.name for p in out.glob("*")
                         if not (p.name.startswith(".") or p.name == TOKENIZER_FILE or p.match(SHARD_GLOB))]
            if strangers:
                raise ShardError(f"{out} has no {MANIFEST} but holds {strangers[:3]}: not a shard folder to start")
            return build_shard_folder(files, config, tokenizer_path, out, fingerprint, blocks)
        manifest = read_manifest(out)
        if any(v["fingerprint"] == fingerprint for v in manifest["versions"]):
            log.info("tokenize: %s already holds this batch (fingerprint %s), nothing appended", out, fingerprint)
            return manifest
        tokenizer = Tokenizer.from_file(str(out / TOKENIZER_FILE))
        check_folder_tokenizer(out, manifest, config, tokenizer)
        remove_unlisted(out, manifest)
        start_ray(config.ray)
        entries = encode_into_shards(files, config, tokenizer, out, manifest["tokenizer"]["eod_id"],
                                     np.dtype(manifest["dtype"]), version=manifest["version"] + 1,
                                     first_index=len(manifest["shards"]), blocks=blocks)
        manifest = extend_manifest(manifest, entries, fingerprint=fingerprint,
                                   config_hash=config.section_hash("tokenize", "shard"))
        write_manifest(out, manifest)
    log.info("tokenize: version %d of %s adds %d docs, %d tokens in %d shards", manifest["version"], out,
             sum(e["docs"] for e in entries), sum(e["tokens"] for e in entries), len(entries))
    return manifest
