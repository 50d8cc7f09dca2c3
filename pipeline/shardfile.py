"""The shard file format: one uncompressed Arrow IPC file per shard, which a training job memory-maps.

    SHARDS/shard-00000.arrow   columns doc_id (string), tokens (list<uint16|uint32>), one record batch
    SHARDS/tokenizer.json      the tokenizer that made them (its sha256 is in the manifest)
    SHARDS/manifest.json       written last: `pipeline.manifest.ShardManifest`

Each shard is one record batch so its token values are a single contiguous buffer (one zero-copy
numpy view). The writer (`stages.tokenize`) and the loader (`stages.train.data`) share this module,
and every path read from a manifest goes through `pipeline.manifest.shard_path`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from pipeline.manifest import ShardEntry, ShardError, shard_path
from pipeline.rundir import atomic_file

TOKENIZER_FILE = "tokenizer.json"
SHARD_GLOB = "shard-*.arrow"
Verify = Literal["size", "sha256"]


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


def write_shard(path: Path, docs: pa.Table, version: int, dtype: np.dtype) -> ShardEntry:
    """Write ordered documents (doc_id, source, tokens) as one shard file, atomically; return its entry."""
    docs = docs.combine_chunks()
    lengths = pc.list_value_length(docs["tokens"])
    sources = pa.table({"source": docs["source"], "n": lengths}).group_by("source").aggregate([("n", "sum")])
    schema = shard_schema(dtype)
    batch = pa.record_batch([docs["doc_id"].chunk(0), docs["tokens"].chunk(0)],
                            schema=schema)
    with atomic_file(path) as tmp:  # streamed to the file: no second copy of the shard in memory
        with ipc.new_file(str(tmp), schema, options=ipc.IpcWriteOptions(compression=None)) as writer:
            writer.write_batch(batch)
        size, sha256 = tmp.stat().st_size, file_sha256(tmp)
    return ShardEntry(file=path.name, version=version, docs=docs.num_rows, tokens=int(pc.sum(lengths).as_py() or 0),
                      bytes=size, dtype=dtype.name, sha256=sha256,
                      sources=dict(sorted(zip(sources["source"].to_pylist(), sources["n_sum"].to_pylist()))))


def open_shard(shard_dir: str | Path, entry: ShardEntry, verify: Verify = "size") -> list[pa.RecordBatch]:
    """Memory-map one manifest shard after checking it is there, whole and (optionally) unaltered."""
    path = shard_path(shard_dir, entry.file)
    if not path.is_file():
        raise ShardError(f"shard {entry.file} is missing from {shard_dir}")
    size = path.stat().st_size
    if size != entry.bytes:
        raise ShardError(f"shard {entry.file} is corrupt: {size} bytes, manifest says {entry.bytes}")
    if verify == "sha256" and file_sha256(path) != entry.sha256:
        raise ShardError(f"shard {entry.file} is corrupt: sha256 differs from the manifest")
    try:
        reader = ipc.open_file(pa.memory_map(str(path), "r"))
        batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"shard {entry.file} is corrupt: {err}") from None
    tokens = sum(len(b.column("tokens").values) for b in batches)
    if tokens != entry.tokens:
        raise ShardError(f"shard {entry.file} is corrupt: {tokens} tokens, manifest says {entry.tokens}")
    return batches


def token_view(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy numpy views of a shard batch: all token values, and document offsets into them."""
    tokens = batch.column("tokens")
    offsets = tokens.offsets.to_numpy()
    values = tokens.values.to_numpy(zero_copy_only=True)
    return values[offsets[0]:offsets[-1]], offsets - offsets[0]
