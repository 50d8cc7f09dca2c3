"""Token shards: uncompressed Arrow IPC files a training job memory-maps, described by one manifest.

    SHARDS/shard-00000.arrow   columns doc_id (string), tokens (list<uint16|uint32>), one record batch
    SHARDS/tokenizer.json      the tokenizer that made them (its sha256 is in the manifest)
    SHARDS/manifest.json       written last: shards with counts, dtype, sha256 and the version that added them

Each shard is one record batch so its token values are a single contiguous buffer (one zero-copy
numpy view), and its bytes depend only on the documents and their order, never on how they arrived.
Shards are numbered globally and tagged with a manifest `version`: an incremental run appends shards
under version + 1 (`stages.tokenize.append_shards`) and never rewrites earlier ones. The manifest's
`fingerprint` is version 1's, then a hash chained over every version's, so it names the whole folder.
"""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.rundir import atomic_write_bytes, atomic_write_json, safe_join

MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = "sluice-shards/1"
SHARD_GLOB = "shard-*.arrow"
Verify = Literal["size", "sha256"]


class ShardError(RuntimeError):
    """A shard that is missing, truncated or altered; the message names the file."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned type holding every id: uint16 halves the bytes for vocabularies <= 65,536."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def shard_schema(dtype: np.dtype) -> pa.Schema:
    return pa.schema([pa.field("doc_id", pa.string(), nullable=False),
                      pa.field("tokens", pa.list_(pa.from_numpy_dtype(dtype)), nullable=False)])


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Cuts a stream of ordered documents into shards of about `tokens_per_shard` tokens.

    Documents are never split: a shard closes at the first document that brings it to the target.
    Input batches may be cut anywhere; the output bytes depend only on the document sequence.
    """

    def __init__(self, out_dir: Path, dtype: np.dtype, tokens_per_shard: int, version: int, first_index: int = 0):
        self.out_dir = Path(out_dir)
        self.schema = shard_schema(dtype)
        self.dtype = dtype
        self.tokens_per_shard = tokens_per_shard
        self.version = version
        self.next_index = first_index
        self.pending: list[pa.Table] = []
        self.pending_tokens = 0
        self.entries: list[dict] = []

    def add(self, docs: pa.Table) -> None:
        """Append documents (columns doc_id, source, tokens) in their final order."""
        while docs.num_rows:
            lengths = pc.list_value_length(docs["tokens"]).to_numpy(zero_copy_only=False)
            reach = self.pending_tokens + np.cumsum(lengths)
            full = np.flatnonzero(reach >= self.tokens_per_shard)
            cut = int(full[0]) + 1 if full.size else docs.num_rows
            self.pending.append(docs.slice(0, cut))
            self.pending_tokens = int(reach[cut - 1])
            docs = docs.slice(cut)
            if full.size:
                self._flush()

    def close(self) -> list[dict]:
        """Write the last, partial shard; return the manifest entries of every shard written."""
        if any(t.num_rows for t in self.pending):
            self._flush()
        return self.entries

    def _flush(self) -> None:
        docs = pa.concat_tables(self.pending).combine_chunks()
        lengths = pc.list_value_length(docs["tokens"])
        sources = pa.table({"source": docs["source"], "n": lengths}).group_by("source").aggregate([("n", "sum")])
        batch = pa.record_batch([docs["doc_id"].chunk(0), docs["tokens"].chunk(0)], schema=self.schema)
        sink = pa.BufferOutputStream()
        with ipc.new_file(sink, self.schema, options=ipc.IpcWriteOptions(compression=None)) as writer:
            writer.write_batch(batch)
        data = sink.getvalue()
        name = shard_name(self.next_index)
        atomic_write_bytes(self.out_dir / name, data)
        self.entries.append({
            "file": name,
            "version": self.version,
            "docs": docs.num_rows,
            "tokens": self.pending_tokens,
            "bytes": data.size,
            "dtype": self.dtype.name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "sources": dict(sorted(zip(sources["source"].to_pylist(), sources["n_sum"].to_pylist()))),
        })
        self.next_index += 1
        self.pending, self.pending_tokens = [], 0


def totals(entries: list[dict]) -> dict:
    """Documents, tokens and tokens per source over shard entries."""
    sources: Counter[str] = Counter()
    for e in entries:
        sources.update(e["sources"])
    return {"docs": sum(e["docs"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
            "sources": dict(sorted(sources.items()))}


def manifest_fingerprint(versions: list[dict]) -> str:
    """Identity of the whole folder: version 1's fingerprint, then a hash chained over every version's."""
    if len(versions) == 1:
        return versions[0]["fingerprint"]
    return hashlib.sha256("\n".join(v["fingerprint"] for v in versions).encode()).hexdigest()[:16]


def version_entry(version: int, fingerprint: str, config_hash: str, entries: list[dict]) -> dict:
    return {"version": version, "fingerprint": fingerprint, "config_hash": config_hash,
            "shards": [e["file"] for e in entries]}


def build_manifest(entries: list[dict], *, version: int, fingerprint: str, config_hash: str,
                   tokenizer: dict, dtype: np.dtype) -> dict:
    """The manifest of one version's shards (no paths, no clock: equal inputs give equal bytes)."""
    return {
        "format": FORMAT,
        "version": version,
        "fingerprint": fingerprint,
        "config_hash": config_hash,
        "tokenizer": tokenizer,
        "dtype": dtype.name,
        **totals(entries),
        "versions": [version_entry(version, fingerprint, config_hash, entries)],
        "shards": entries,
    }


def extend_manifest(manifest: dict, entries: list[dict], *, fingerprint: str, config_hash: str) -> dict:
    """The next version: earlier shards kept as they are, `entries` appended, totals over all of them."""
    version = manifest["version"] + 1
    shards = manifest["shards"] + entries
    versions = manifest["versions"] + [version_entry(version, fingerprint, config_hash, entries)]
    return {**manifest, "version": version, "fingerprint": manifest_fingerprint(versions),
            "config_hash": config_hash, **totals(shards), "versions": versions, "shards": shards}


def write_manifest(shard_dir: Path, manifest: dict) -> None:
    atomic_write_json(Path(shard_dir) / MANIFEST, manifest)


def read_manifest(shard_dir: str | Path) -> dict:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(f"no {MANIFEST} in {shard_dir}: not a finished shard folder")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{path}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def open_shard(shard_dir: str | Path, entry: dict, verify: Verify = "size") -> list[pa.RecordBatch]:
    """Memory-map one manifest shard after checking it is there, whole and (optionally) unaltered."""
    path = safe_join(Path(shard_dir), entry["file"])
    if not path.is_file():
        raise ShardError(f"shard {entry['file']} is missing from {shard_dir}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise ShardError(f"shard {entry['file']} is corrupt: {size} bytes, manifest says {entry['bytes']}")
    if verify == "sha256" and file_sha256(path) != entry["sha256"]:
        raise ShardError(f"shard {entry['file']} is corrupt: sha256 differs from the manifest")
    try:
        reader = ipc.open_file(pa.memory_map(str(path), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"shard {entry['file']} is corrupt: {err}") from None
    tokens = sum(len(b.column("tokens").values) for b in batches)
    if tokens != entry["tokens"]:
        raise ShardError(f"shard {entry['file']} is corrupt: {tokens} tokens, manifest says {entry['tokens']}")
    return batches


def token_view(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy numpy views of a shard batch: all token values, and document offsets into them."""
    tokens = batch.column("tokens")
    offsets = tokens.offsets.to_numpy()
    values = tokens.values.to_numpy(zero_copy_only=True)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]


def inspect_shards(shard_dir: str | Path, samples: int = 3, width: int = 40) -> str:
    """A human summary for `sluice inspect`: manifest totals, a document-length histogram, decoded samples."""
    from tokenizers import Tokenizer

    shard_dir = Path(shard_dir)
    m = read_manifest(shard_dir)
    tok = m["tokenizer"]
    lines = [
        f"{shard_dir}: {len(m['shards'])} shards, {m['docs']:,} docs, {m['tokens']:,} tokens, "
        f"dtype {m['dtype']}, version {m['version']}",
        f"tokenizer {tok['file']} (vocab {tok['vocab_size']:,}, eod {tok['eod_token']!r}, "
        f"sha256 {tok['sha256'][:12]}), config {m['config_hash']}",
        "tokens by source: " + ", ".join(f"{s} {n:,}" for s, n in m["sources"].items()),
        "",
        f"{'shard':<20}{'version':>8}{'docs':>10}{'tokens':>14}{'bytes':>14}",
    ]
    lines += [f"{e['file']:<20}{e['version']:>8}{e['docs']:>10,}{e['tokens']:>14,}{e['bytes']:>14,}"
              for e in m["shards"]]
    lengths, first = [], None
    for entry in m["shards"]:
        for batch in open_shard(shard_dir, entry):
            values, offsets = token_view(batch)
            lengths.append(np.diff(offsets))
            if first is None and len(offsets) > 1:
                first = (batch, values, offsets)
    if lengths:
        lines += ["", "tokens per document:"] + histogram(np.concatenate(lengths), width)
    if first is not None:
        tokenizer = Tokenizer.from_file(str(safe_join(shard_dir, tok["file"])))
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
