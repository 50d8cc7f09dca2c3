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


def window_documents(docs: pa.Table, window: ShardWindow, tokens_per_shard: int, sort_keys: list[str]) -> pa.Table:
    """The documents of one shard, in order, from every document of the window's buckets (in any order)."""
    order = pc.sort_indices(docs, sort_keys=[(k, "ascending") for k in sort_keys]).to_numpy()
    lengths = pc.list_value_length(docs["tokens"]).to_numpy()[order]
    starts = window.base + np.cumsum(lengths, dtype=np.int64) - lengths
    return take_documents(docs, order[shard_of(starts, tokens_per_shard) == window.index])


def take_documents(docs: pa.Table, rows: np.ndarray) -> pa.Table:
    """`docs.take(rows)`, with each document's `tokens` copied as one run straight from its chunk
    (memory-mapped scratch): Arrow's take on a list column builds an 8-byte index per token, which
    made a 50M-token shard cost its worker 0.5 GB more."""
    rows = np.asarray(rows, np.int64)
    chunks = docs["tokens"].chunks
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    chunk_of = np.searchsorted(bounds, rows, side="right") - 1
    local = rows - bounds[chunk_of]
    values = [c.flatten().to_numpy() for c in chunks]  # zero-copy: the values a (sliced) chunk covers
    offsets = [c.offsets.to_numpy() for c in chunks]
    runs = [(values[c][offsets[c][r] - offsets[c][0]:offsets[c][r + 1] - offsets[c][0]])
            for c, r in zip(chunk_of.tolist(), local.tolist())]
    value_type = docs.schema.field("tokens").type.value_type
    flat = np.concatenate(runs) if runs else np.empty(0, value_type.to_pandas_dtype())
    new_offsets = np.zeros(len(rows) + 1, np.int32)
    np.cumsum([len(r) for r in runs], out=new_offsets[1:])
    taken = pa.ListArray.from_arrays(pa.array(new_offsets), pa.array(flat, value_type))
    column = docs.schema.get_field_index("tokens")
    return docs.drop_columns(["tokens"]).take(rows).add_column(column, docs.schema.field(column), taken)


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
