"""Tokenize a curated run into token shards: RUN/kept/part-*.parquet -> RUN/shards/.

The tokenizer is a Hugging Face `tokenizer.json` given by path, or a byte-level BPE trained on a
seeded sample of the curated documents: the documents with the smallest seeded hash of (source, id),
chosen by Ray tasks per piece and merged as small bottom-k lists; their texts stream from Ray tasks
through the driver into the trainer, a child process (`stages.bpe`), so the driver holds the
sample's keys and one piece's texts at a time, and never the trainer's counts.

The order. The input is the kept files in name order, cut into pieces (file, row group); a document's
position is (piece << 32) + row. Each document has a 64-bit key: a seeded xxh64 of (source, id) when
`shard.shuffle`, else its position. The token stream is the documents sorted by (key, position): a
pure function of the documents and the seed, whatever the task or worker count.

Two passes of Ray tasks, the driver holding only counts (never documents or tokens):
 1. tokenize: a task per piece encodes its documents with `encode_batch`, sorts them by key and writes
    them to a scratch Arrow file; it returns the documents and tokens per key bucket (the key's top 16
    bits when shuffled, the piece when not: both cut the stream into consecutive runs).
 2. shard: the driver sums the bucket counts and plans the shard windows (`stages.shard.plan_windows`);
    a task per window reads the buckets it needs from the scratch files (memory-mapped, found by
    binary search on the sorted key, one file mapped at a time), orders them, keeps the documents
    that start in its window and writes the shard; it returns only the shard's manifest entry.
The driver then renames the shards to consecutive names and writes `manifest.json` from the entries.
The shard folder is built under a temporary name and renamed into place, so a rerun either skips it
(same fingerprint) or rebuilds it whole.

`append_shards` is the incremental path: a later curated batch becomes the folder's next manifest
version, in new shards after the existing ones, with the folder's own tokenizer.

Ray must be up (the flows start it); the workers write into the shard folder, so on a multi-node
cluster it must be on storage every node sees.
"""
from __future__ import annotations

import array
import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import xxhash
from tokenizers import Tokenizer

from pipeline.config import SluiceConfig, TokenizeConfig
from pipeline.manifest import (FORMAT, MANIFEST, ShardEntry, ShardError, ShardManifest, TokenizerInfo,
                               read_manifest, write_manifest)
from pipeline.progress import Progress
from pipeline.rundir import RunDir, atomic_dir
from pipeline.runtime import map_in_order
from pipeline.shardfile import SHARD_GLOB, TOKENIZER_FILE, file_sha256, shard_name, token_dtype, write_shard
from stages.bpe import train_bpe_apart
from stages.shard import ShardWindow, plan_windows, window_documents

log = logging.getLogger("sluice")

DEFAULT_EOD = "<|endoftext|>"
# End-of-text tokens of common tokenizer families, tried in order when eod_token is "auto".
KNOWN_EOD = (DEFAULT_EOD, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
ENCODE_BATCH = 1024  # documents per encode_batch call: keeps the Rust threads busy, bounds Encoding memory
KEY, POSITION = "key", "position"  # scratch columns: the order key and the input position (its tie-break)
HASH_BUCKET_BITS = 16  # shuffled keys are bucketed by their top bits: 65,536 counts on the driver


# ------------------------------------------------------------------------------------------------
# the tokenizer


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
    encodings = tokenizer.encode_batch_fast(texts, add_special_tokens=False)
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    # each document's ids appended in C: out of Rust and packed in 3.6 % of the encode time, against
    # 5.5 % for np.fromiter over one chained iterator (one-thread profile, real text)
    packed = array.array(np.dtype(dtype).char)
    for encoding in encodings:
        packed.extend(encoding.ids)
    flat = np.frombuffer(packed, dtype)
    extra = 0 if eod_id is None else 1
    offsets = np.zeros(len(encodings) + 1, np.int32)
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


def tokenize_docs(tokenizer: Tokenizer, docs: pa.Table, eod_id: int | None, dtype: np.dtype) -> pa.Table:
    """Curated documents (id, text, source) in; doc_id, source and tokens out, `ENCODE_BATCH` at a time."""
    texts = pc.fill_null(docs["text"], "")
    tokens = [encode_docs(tokenizer, texts.slice(i, ENCODE_BATCH).to_pylist(), eod_id, dtype)
              for i in range(0, docs.num_rows, ENCODE_BATCH)]
    list_type = pa.list_(pa.from_numpy_dtype(dtype))
    return pa.table({"doc_id": docs["id"].cast(pa.string()), "source": docs["source"].cast(pa.string()),
                     "tokens": pa.chunked_array(tokens, list_type)})


# ------------------------------------------------------------------------------------------------
# the input and its order


def input_pieces(files: list[Path]) -> list[dict]:
    """(file, row group) pieces in input order, with their documents and (uncompressed) bytes, from
    the Parquet footers alone."""
    pieces = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        pieces += [{"path": str(f), "row_group": g, "docs": meta.row_group(g).num_rows,
                    "bytes": meta.row_group(g).total_byte_size} for g in range(meta.num_row_groups)]
    return [dict(p, piece=i) for i, p in enumerate(pieces)]


def read_piece(piece: dict, columns: list[str]) -> pa.Table:
    return pq.ParquetFile(piece["path"]).read_row_group(piece["row_group"], columns=columns)


def hash_keys(ids: pa.Array | pa.ChunkedArray, sources: pa.Array | pa.ChunkedArray, seed: int) -> np.ndarray:
    """A seeded 64-bit hash of each document's identity (source, id)."""
    return np.fromiter((xxhash.xxh64_intdigest(f"{s or ''}\0{i or ''}".encode(), seed)
                        for s, i in zip(sources.to_pylist(), ids.to_pylist())), np.uint64, len(ids))


@dataclass(frozen=True)
class Ordering:
    """How documents are ordered and bucketed: by seeded hash (shuffle) or by input position."""
    shuffle: bool
    seed: int

    @property
    def shift(self) -> int:
        """Bucket = key >> shift: the hash's top bits, or the piece part of a position."""
        return 64 - HASH_BUCKET_BITS if self.shuffle else 32

    def num_buckets(self, num_pieces: int) -> int:
        return 1 << HASH_BUCKET_BITS if self.shuffle else num_pieces

    def keys(self, docs: pa.Table, piece: int) -> tuple[np.ndarray, np.ndarray]:
        """The order key and input position of each document of one piece."""
        positions = (piece << 32) + np.arange(docs.num_rows, dtype=np.int64)
        keys = hash_keys(docs["id"], docs["source"], self.seed) if self.shuffle else positions.astype(np.uint64)
        return keys, positions

    def key_range(self, first_bucket: int, last_bucket: int) -> tuple[int, int]:
        """Keys [lo, hi) of a run of buckets (hi may be 2**64: 'to the end')."""
        return first_bucket << self.shift, (last_bucket + 1) << self.shift


# ------------------------------------------------------------------------------------------------
# pass 1: tokenize each piece into a key-sorted scratch file, count documents and tokens per bucket

BUCKET_COUNTS = pa.schema([("piece", pa.int64()), ("bucket", pa.int64()), ("docs", pa.int64()),
                           ("tokens", pa.int64())])


def scratch_file(scratch: Path, piece: int) -> Path:
    return scratch / f"piece-{piece:06d}.arrow"


def write_scratch(path: Path, table: pa.Table) -> None:
    """One uncompressed record batch, so readers memory-map it and binary-search its key column."""
    table = table.combine_chunks()
    with ipc.new_file(str(path), table.schema, options=ipc.IpcWriteOptions(compression=None)) as writer:
        writer.write_table(table, max_chunksize=max(table.num_rows, 1))


def read_scratch(path: Path) -> pa.Table:
    return ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def bucket_counts(piece: int, keys: np.ndarray, lengths: np.ndarray, shift: int) -> pa.Table:
    """Documents and tokens per bucket of one piece's sorted (non-empty) keys: all that pass 1 returns."""
    buckets, first = np.unique(keys >> np.uint64(shift), return_index=True)
    docs = np.diff(np.append(first, len(keys)))
    tokens = np.add.reduceat(lengths, first)
    return pa.table({"piece": np.full(len(buckets), piece, np.int64), "bucket": buckets.astype(np.int64),
                     "docs": docs.astype(np.int64), "tokens": tokens.astype(np.int64)}, schema=BUCKET_COUNTS)


def make_tokenize_task(tokenizer_json: str, eod_id: int | None, dtype: np.dtype, ordering: Ordering,
                       scratch: Path) -> Callable[[dict], pa.Table]:
    """The Ray task: a piece in, its bucket counts out; its tokens go to a scratch file."""

    def tokenize(piece: dict) -> pa.Table:
        docs = read_piece(piece, ["id", "text", "source"])
        if not docs.num_rows:
            return BUCKET_COUNTS.empty_table()
        keys, positions = ordering.keys(docs, piece["piece"])
        table = tokenize_docs(_tokenizer_from_json(tokenizer_json), docs, eod_id, dtype)
        table = table.append_column(KEY, pa.array(keys)).append_column(POSITION, pa.array(positions))
        table = table.take(pc.sort_indices(table, sort_keys=[(KEY, "ascending"), (POSITION, "ascending")]))
        write_scratch(scratch_file(scratch, piece["piece"]), table)
        lengths = pc.list_value_length(table["tokens"]).to_numpy().astype(np.int64)
        return bucket_counts(piece["piece"], table[KEY].to_numpy(), lengths, ordering.shift)

    return tokenize


@dataclass
class PieceSpans:
    """Each piece's first and last bucket: which scratch files a run of buckets needs (small: two ints a piece)."""
    first: np.ndarray  # num_buckets when the piece is empty
    last: np.ndarray  # -1 when the piece is empty

    def holding(self, first_bucket: int, last_bucket: int) -> list[int]:
        return np.flatnonzero((self.first <= last_bucket) & (self.last >= first_bucket)).tolist()


@dataclass
class StreamCounts:
    """What the driver knows of the tokenized stream: documents and tokens per bucket, each piece's span."""
    docs: np.ndarray
    tokens: np.ndarray
    spans: PieceSpans

    @classmethod
    def empty(cls, num_buckets: int, num_pieces: int) -> StreamCounts:
        return cls(np.zeros(num_buckets, np.int64), np.zeros(num_buckets, np.int64),
                   PieceSpans(np.full(num_pieces, num_buckets, np.int64), np.full(num_pieces, -1, np.int64)))

    def add(self, counts: pa.Table) -> None:
        piece, bucket = counts["piece"].to_numpy(), counts["bucket"].to_numpy()
        np.add.at(self.docs, bucket, counts["docs"].to_numpy())
        np.add.at(self.tokens, bucket, counts["tokens"].to_numpy())
        np.minimum.at(self.spans.first, piece, bucket)
        np.maximum.at(self.spans.last, piece, bucket)


def tokenize_pieces(pieces: list[dict], task: Callable, ordering: Ordering, in_flight: int | None) -> StreamCounts:
    counts = StreamCounts.empty(ordering.num_buckets(len(pieces)), len(pieces))
    with Progress("tokenize", total_items=sum(p["docs"] for p in pieces),
                  total_bytes=sum(p["bytes"] for p in pieces), unit="docs") as progress:
        for piece, batch in zip(pieces, map_in_order(task, pieces, in_flight)):
            counts.add(batch)
            progress.advance(piece["docs"], piece["bytes"])
    return counts


# ------------------------------------------------------------------------------------------------
# pass 2: one task per shard window reads its buckets back, orders them and writes the shard

def window_slices(scratch: Path, spans: PieceSpans, ordering: Ordering, window: ShardWindow) -> Iterator[pa.Table]:
    """Every document of the window's buckets, a slice of each scratch file that holds any, one
    file mapped at a time."""
    lo, hi = ordering.key_range(window.first_bucket, window.last_bucket)
    for piece in spans.holding(window.first_bucket, window.last_bucket):
        table = read_scratch(scratch_file(scratch, piece))
        keys = table[KEY].chunk(0).to_numpy()
        a = int(np.searchsorted(keys, np.uint64(lo)))
        b = int(np.searchsorted(keys, np.uint64(hi))) if hi < 1 << 64 else len(keys)
        yield table.slice(a, b - a)
        del table, keys


def make_shard_task(scratch: Path, spans: PieceSpans, ordering: Ordering, tokens_per_shard: int, version: int,
                    dtype: np.dtype) -> Callable[[ShardWindow], ShardEntry | None]:
    """The Ray task: a shard window in, the manifest entry of the shard it wrote out (None: no documents)."""

    def shard(window: ShardWindow) -> ShardEntry | None:
        docs = window_documents(functools.partial(window_slices, scratch, spans, ordering, window), window,
                                tokens_per_shard, [KEY, POSITION])
        if not docs.num_rows:
            return None
        return write_shard(scratch / f"window-{window.index:012d}.arrow", docs, version, dtype)

    return shard


def encode_into_shards(files: list[Path], config: SluiceConfig, tokenizer: Tokenizer, out: Path,
                       eod_id: int | None, dtype: np.dtype, version: int, first_index: int = 0,
                       in_flight: int | None = None) -> list[ShardEntry]:
    """Tokenize, order and cut `files` into shards numbered from `first_index`; return their manifest entries.

    `in_flight` caps the Ray tasks submitted at once (default: two per CPU); it never changes the output.
    """
    scfg = config.shard
    ordering = Ordering(scfg.shuffle, scfg.seed)
    scratch = out / f".work.tmp-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    try:
        pieces = input_pieces(files)
        counts = tokenize_pieces(pieces, make_tokenize_task(tokenizer.to_str(), eod_id, dtype, ordering, scratch),
                                 ordering, in_flight)
        windows = plan_windows(counts.docs, counts.tokens, scfg.tokens_per_shard)
        task = make_shard_task(scratch, counts.spans, ordering, scfg.tokens_per_shard, version, dtype)
        written = [entry for entry in map_in_order(task, windows, in_flight) if entry is not None]
        entries = []
        for number, entry in enumerate(written, start=first_index):
            os.replace(scratch / entry.file, out / shard_name(number))
            entries.append(entry.model_copy(update={"file": shard_name(number)}))
        return entries
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# the BPE training sample: bottom-k of a seeded hash, per piece on Ray, merged on the driver

SAMPLE_KEYS = pa.schema([(KEY, pa.uint64()), (POSITION, pa.int64())])


def smallest(table: pa.Table, n: int) -> pa.Table:
    """The `n` rows with the smallest (key, position)."""
    order = pc.sort_indices(table, sort_keys=[(KEY, "ascending"), (POSITION, "ascending")])
    return table.take(order[:n])


def make_bottom_k_task(n: int, seed: int) -> Callable[[dict], pa.Table]:
    def bottom_k(piece: dict) -> pa.Table:
        docs = read_piece(piece, ["id", "source"])
        keys, positions = Ordering(True, seed).keys(docs, piece["piece"])
        return smallest(pa.table({KEY: keys, POSITION: positions}, schema=SAMPLE_KEYS), n)

    return bottom_k


def read_sampled_texts(piece: dict) -> list[str]:
    """The texts of the piece's chosen rows (a null text as an empty one)."""
    return pc.fill_null(read_piece(piece, ["text"]).take(pa.array(piece["rows"]))["text"], "").to_pylist()


def sample_texts(files: list[Path], n: int, seed: int, in_flight: int | None = None) -> Iterator[str]:
    """The texts of the `n` documents with the smallest seeded hash of (source, id), in input order.

    A stream, not a list: BPE training only counts words, so the order does not change the tokenizer,
    and the driver holds `n` keys plus one piece's chosen texts, never the whole sample (at 20,000
    documents the trainer's peak was ~120 MB lower fed from a stream than from a list).
    """
    pieces = input_pieces(files)
    chosen = SAMPLE_KEYS.empty_table()
    for batch in map_in_order(make_bottom_k_task(n, seed), pieces, in_flight):
        chosen = smallest(pa.concat_tables([chosen, batch]), n)
    positions = np.sort(chosen[POSITION].to_numpy())
    wanted = [dict(pieces[p], rows=(positions[positions >> 32 == p] & 0xFFFFFFFF).tolist())
              for p in np.unique(positions >> 32).tolist()]
    for texts in map_in_order(read_sampled_texts, wanted, in_flight):
        yield from texts


# ------------------------------------------------------------------------------------------------
# shard folders


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


def prepare_tokenizer(cfg: TokenizeConfig, files: list[Path], tokenizer_path: str | None, out: Path,
                      in_flight: int | None) -> Tokenizer:
    """Load or train the tokenizer, and place its exact bytes in the shard folder."""
    target = out / TOKENIZER_FILE
    if tokenizer_path:
        shutil.copyfile(tokenizer_path, target)
        return Tokenizer.from_file(str(target))
    specials = [DEFAULT_EOD if cfg.eod_token in (None, "auto") else cfg.eod_token]
    log.info("tokenize: training a byte-level BPE (vocab %d) on up to %d documents", cfg.vocab_size,
             cfg.train_sample_docs)
    return train_bpe_apart(sample_texts(files, cfg.train_sample_docs, cfg.seed, in_flight), cfg.vocab_size, specials,
                           target)


def write_shards(files: list[Path], config: SluiceConfig, tokenizer: Tokenizer, out: Path,
                 fingerprint: str, trained: bool, in_flight: int | None = None) -> ShardManifest:
    """Version 1 of a shard folder: every document of `files`; return the manifest."""
    eod_token, eod_id = resolve_eod(tokenizer, config.tokenize.eod_token)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    dtype = token_dtype(vocab_size)
    entries = encode_into_shards(files, config, tokenizer, out, eod_id, dtype, version=1, in_flight=in_flight)
    tok_info = TokenizerInfo(file=TOKENIZER_FILE, sha256=file_sha256(out / TOKENIZER_FILE), vocab_size=vocab_size,
                             eod_token=eod_token, eod_id=eod_id, trained=trained)
    return ShardManifest.first(entries, fingerprint=fingerprint, config_hash=config.section_hash("tokenize", "shard"),
                               tokenizer=tok_info, dtype=dtype.name)


def finished_fingerprint(shard_dir: Path) -> str | None:
    """The fingerprint of a finished shard folder; None when absent or unreadable (then rebuilt)."""
    try:
        return read_manifest(shard_dir).fingerprint
    except ShardError:
        return None


def kept_files(run: Path) -> list[Path]:
    files = RunDir(run).kept_files()
    if not files:
        raise FileNotFoundError(f"{run}/kept has no part-*.parquet files: not a curated run")
    return files


def configured_tokenizer(config: SluiceConfig, tokenizer: str | None = None) -> str | None:
    path = tokenizer or config.tokenize.tokenizer
    if path and not Path(path).is_file():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    return path


def build_shard_folder(files: list[Path], config: SluiceConfig, tokenizer_path: str | None, final: Path,
                       fingerprint: str, in_flight: int | None, seconds: dict[str, float] | None = None) -> ShardManifest:
    """Build version 1 in a temporary sibling of `final`, manifest last, then rename it into place.

    `seconds` receives the wall time of the tokenizer's preparation ("bpe training" when one is
    trained) apart from "tokenize" (encode, order, write the shards), as their costs grow differently.
    """
    seconds = {} if seconds is None else seconds
    with atomic_dir(final) as tmp:
        started = time.perf_counter()
        tok = prepare_tokenizer(config.tokenize, files, tokenizer_path, tmp, in_flight)
        seconds["tokenizer" if tokenizer_path else "bpe training"] = time.perf_counter() - started
        started = time.perf_counter()
        manifest = write_shards(files, config, tok, tmp, fingerprint, trained=not tokenizer_path, in_flight=in_flight)
        write_manifest(tmp, manifest)
        seconds["tokenize"] = time.perf_counter() - started
    log.info("tokenize: %d docs, %d tokens in %d shards -> %s", manifest.docs, manifest.tokens,
             len(manifest.shards), final)
    return manifest


def tokenize_run(run_dir: str | Path, config: SluiceConfig, tokenizer: str | None = None,
                 in_flight: int | None = None, seconds: dict[str, float] | None = None) -> Path:
    """Tokenize RUN/kept into RUN/shards (skipped when finished with the same fingerprint); return it.

    `in_flight` caps the Ray tasks submitted at once (default: two per CPU); it never changes the output.
    `seconds` receives the wall time of each part that ran (see `build_shard_folder`).
    """
    run = Path(run_dir)
    files = kept_files(run)
    tokenizer_path = configured_tokenizer(config, tokenizer)
    fingerprint = shard_fingerprint(config, files, tokenizer_path)
    final = RunDir(run).shards
    if finished_fingerprint(final) == fingerprint:
        log.info("tokenize: %s finished earlier with the same fingerprint, skipped", final)
        return final
    build_shard_folder(files, config, tokenizer_path, final, fingerprint, in_flight, seconds)
    return final


@contextlib.contextmanager
def exclusive(shard_dir: Path) -> Iterator[None]:
    """One writer per shard folder: overlapping scheduled runs wait for each other instead of interleaving."""
    shard_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(shard_dir.parent / f".{shard_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_unlisted(shard_dir: Path, manifest: ShardManifest) -> None:
    """Delete what a killed append left: shard files the manifest does not list, temporary files and folders."""
    listed = {e.file for e in manifest.shards}
    for path in chain(shard_dir.glob(SHARD_GLOB), shard_dir.glob(".*.tmp-*")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.name not in listed:
            path.unlink()


def check_folder_tokenizer(shard_dir: Path, manifest: ShardManifest, config: SluiceConfig,
                           tokenizer: Tokenizer) -> None:
    """An append must encode exactly as the earlier versions did: same tokenizer bytes, same end-of-document."""
    tok = manifest.tokenizer
    if file_sha256(shard_dir / TOKENIZER_FILE) != tok.sha256:
        raise ShardError(f"{shard_dir / TOKENIZER_FILE} differs from the sha256 in its manifest")
    configured = configured_tokenizer(config)
    if configured and file_sha256(Path(configured)) != tok.sha256:
        raise ValueError(f"tokenize.tokenizer {configured} is not the tokenizer of {shard_dir}; "
                         "a shard folder has one tokenizer: append to a new shard folder instead")
    eod = resolve_eod(tokenizer, config.tokenize.eod_token)
    if eod != (tok.eod_token, tok.eod_id):
        raise ValueError(f"tokenize.eod_token resolves to {eod[0]!r} but {shard_dir} ends documents with "
                         f"{tok.eod_token!r}; keep the folder's end-of-document token")


def append_shards(run_dir: str | Path, shard_dir: str | Path, config: SluiceConfig,
                  in_flight: int | None = None) -> ShardManifest:
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
            return build_shard_folder(files, config, tokenizer_path, out, fingerprint, in_flight)
        manifest = read_manifest(out)
        if manifest.holds(fingerprint):
            log.info("tokenize: %s already holds this batch (fingerprint %s), nothing appended", out, fingerprint)
            return manifest
        tokenizer = Tokenizer.from_file(str(out / TOKENIZER_FILE))
        check_folder_tokenizer(out, manifest, config, tokenizer)
        remove_unlisted(out, manifest)
        entries = encode_into_shards(files, config, tokenizer, out, manifest.tokenizer.eod_id,
                                     np.dtype(manifest.dtype), version=manifest.version + 1,
                                     first_index=len(manifest.shards), in_flight=in_flight)
        manifest = manifest.extend(entries, fingerprint=fingerprint,
                                   config_hash=config.section_hash("tokenize", "shard"))
        write_manifest(out, manifest)
    log.info("tokenize: version %d of %s adds %d docs, %d tokens in %d shards", manifest.version, out,
             sum(e.docs for e in entries), sum(e.tokens for e in entries), len(entries))
    return manifest
