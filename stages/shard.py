"""Sharding: which shard each document goes to, and `sluice inspect` (the file format is
`pipeline.shardfile`, the manifest `pipeline.manifest`).

A shard's bytes depend only on the documents and their order, never on how they arrived.
Shards are numbered globally and tagged with a manifest `version`: an incremental run appends shards
under version + 1 (`stages.tokenize.append_shards`) and never rewrites earlier ones.

The cut rule: the documents, in their final order, form one token stream; a document goes to shard
window floor(start / tokens_per_shard), where start is the stream offset of its first token. Windows
that no document starts in are skipped and the others numbered consecutively. A shard so holds the
documents that start in its window of tokens_per_shard tokens (about that many tokens; documents are
never split). Unlike "close at the first document that reaches the target", this needs no pass over
the whole stream in order: given how many tokens precede a group of documents (summed from small
per-bucket counts), a worker places each of its documents on its own, so shards are written by
workers in parallel and nobody holds the corpus.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.manifest import read_manifest, shard_path
from pipeline.shardfile import open_shard, token_view



def shard_of(starts: np.ndarray, tokens_per_shard: int) -> np.ndarray:
    """The cut rule: the window of each document, from the stream offset of its first token."""
    return starts // tokens_per_shard


@dataclass(frozen=True)
class ShardWindow:
    """One shard to write: window `index` of the stream, and the run of buckets its documents start in."""
    index: int
    first_bucket: int
    last_bucket: int
    base: int  # stream offset of first_bucket's first token


def plan_windows(bucket_docs: np.ndarray, bucket_tokens: np.ndarray, tokens_per_shard: int) -> list[ShardWindow]:
    """Shard windows over a stream cut into consecutive buckets, from the buckets' document and token counts.

    Bucket b's documents start at offsets in [S[b], S[b + 1]] (S: the running token count; the upper end
    only for a last document of zero tokens), so window k needs the buckets where that range meets
    [k * tokens_per_shard, (k + 1) * tokens_per_shard). A window inside one long document gets no shard.
    """
    if not bucket_docs.sum():
        return []
    offsets = np.concatenate([[0], np.cumsum(bucket_tokens, dtype=np.int64)])
    lo = np.arange(int(offsets[-1]) // tokens_per_shard + 1, dtype=np.int64) * tokens_per_shard
    firsts = np.searchsorted(offsets[1:], lo, side="left")
    lasts = np.searchsorted(offsets[:-1], lo + tokens_per_shard, side="left") - 1
    occupied = np.concatenate([[0], np.cumsum(bucket_docs > 0)])  # buckets with documents before b
    return [ShardWindow(k, int(a), int(b), int(offsets[a]))
            for k, (a, b) in enumerate(zip(firsts.tolist(), lasts.tolist()))
            if a <= b and occupied[b + 1] > occupied[a]]


def window_documents(slices: Callable[[], Iterable[pa.Table]], window: ShardWindow, tokens_per_shard: int,
                     sort_keys: list[str]) -> pa.Table:
    """The documents of one shard, in order, from every document of the window's buckets.

    `slices()` yields those documents as tables (one per scratch file, in any order) and is called
    twice: first for the order, from every column but `tokens`; then to copy each chosen document's
    tokens as one run straight from its slice (memory-mapped scratch) into the shard's one token
    array. A slice can go, and its file's map close, before the next is made, so a worker holds the
    shard's tokens and one file's mapped pages, not every file's at once; and no 8-byte index per
    token is built, as Arrow's take on a list column would (0.5 GB more for a 50M-token shard).
    """
    small, lengths = [], []
    for i, part in enumerate(slices()):
        n = part.num_rows
        small.append(part.drop_columns(["tokens"]).append_column("_slice", pa.array(np.full(n, i, np.int32)))
                     .append_column("_row", pa.array(np.arange(n, dtype=np.int64))))
        lengths.append(pc.list_value_length(part["tokens"]).to_numpy().astype(np.int64))
        schema = part.schema
    if not small:
        raise ValueError(f"shard window {window.index} holds no documents")
    column = schema.get_field_index("tokens")
    value_type = schema.field(column).type.value_type
    index = pa.concat_tables(small)
    all_lengths = np.concatenate(lengths)
    order = pc.sort_indices(index, sort_keys=[(k, "ascending") for k in sort_keys]).to_numpy()
    starts = window.base + np.cumsum(all_lengths[order], dtype=np.int64) - all_lengths[order]
    chosen = order[shard_of(starts, tokens_per_shard) == window.index]
    picked = index.take(pa.array(chosen))
    del index, small
    offsets = np.zeros(len(chosen) + 1, np.int64)
    np.cumsum(all_lengths[chosen], out=offsets[1:])
    flat = np.empty(int(offsets[-1]), value_type.to_pandas_dtype())
    slice_of, row_of = picked["_slice"].to_numpy(), picked["_row"].to_numpy()
    for i, part in enumerate(slices()):
        mine = np.flatnonzero(slice_of == i)
        if not mine.size:
            continue
        tokens = part["tokens"].combine_chunks()
        values = tokens.flatten().to_numpy()  # zero-copy: the values the (sliced) array covers
        starts_in = tokens.offsets.to_numpy() - tokens.offsets[0].as_py()
        for j, r in zip(mine.tolist(), row_of[mine].tolist()):
            flat[offsets[j]:offsets[j + 1]] = values[starts_in[r]:starts_in[r + 1]]
    runs = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat, value_type))
    return picked.drop_columns(["_slice", "_row"]).add_column(column, schema.field(column), runs)


def inspect_shards(shard_dir: str | Path, samples: int = 3, width: int = 40) -> str:
    """A human summary for `sluice inspect`: manifest totals, a document-length histogram, decoded samples."""
    from tokenizers import Tokenizer

    shard_dir = Path(shard_dir)
    m = read_manifest(shard_dir)
    tok = m.tokenizer
    lines = [
        f"{shard_dir}: {len(m.shards)} shards, {m.docs:,} docs, {m.tokens:,} tokens, "
        f"dtype {m.dtype}, version {m.version}",
        f"tokenizer {tok.file} (vocab {tok.vocab_size:,}, eod {tok.eod_token!r}, "
        f"sha256 {tok.sha256[:12]}), config {m.config_hash}",
        "tokens by source: " + ", ".join(f"{s} {n:,}" for s, n in m.sources.items()),
        "",
        f"{'shard':<20}{'version':>8}{'docs':>10}{'tokens':>14}{'bytes':>14}",
    ]
    lines += [f"{e.file:<20}{e.version:>8}{e.docs:>10,}{e.tokens:>14,}{e.bytes:>14,}" for e in m.shards]
    lengths, first = [], None
    for entry in m.shards:
        for batch in open_shard(shard_dir, entry):
            values, offsets = token_view(batch)
            lengths.append(np.diff(offsets))
            if first is None and len(offsets) > 1:
                first = (batch, values, offsets)
    if lengths:
        lines += ["", "tokens per document:"] + histogram(np.concatenate(lengths), width)
    if first is not None:
        tokenizer = Tokenizer.from_file(str(shard_path(shard_dir, tok.file)))
        batch, values, offsets = first
        lines += ["", "samples (decoded):"]
        for i in range(min(samples, len(offsets) - 1)):
            text = tokenizer.decode(values[offsets[i]:offsets[i + 1]].tolist(), skip_special_tokens=False)
            lines.append(f"  [{batch.column('doc_id')[i]}] {text[:300]!r}")
    return "\n".join(lines)


def histogram(lengths: np.ndarray, width: int) -> list[str]:
    """A text histogram over powers of two, the scale on which document lengths vary."""
    edges = 2 ** np.arange(0, int(np.ceil(np.log2(max(lengths.max(), 1)))) + 2)
    counts, _ = np.histogram(lengths, bins=np.concatenate([[0], edges]))
    top = max(counts.max(), 1)
    lo = np.concatenate([[0], edges[:-1]])
    return [f"  {a:>9,}-{b - 1:<9,} {'#' * int(np.ceil(width * c / top)):<{width}} {c:,}"
            for a, b, c in zip(lo, edges, counts) if c]
