"""Exact Jaccard similarity of shingle sets: what `dedup.fuzzy.threshold` means.

A document's shingle set is the set of 32-bit hashes of its shingles, the very values MinHash
summarises (`stages.dedup.minhash.shingle_hashes`), so the S-curve of LSH and the verification
speak about the same sets. A new document's set is built in the same pass as its signature, from
the same hashes, and kept until verification needs it; it travels as the raw bytes of a sorted
uint32 array.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from stages.dedup.minhash import Backend, MinHashParams, U32, batch_signatures, batches, shingle_hashes


def distinct_sets(hashes: np.ndarray, doc: np.ndarray, n: int) -> list[np.ndarray]:
    """Each of `n` documents' sorted, distinct values of `shingle_hashes`."""
    packed = np.sort((doc.astype(np.uint64) << np.uint64(32)) | hashes.astype(np.uint64))
    first = np.ones(len(packed), bool)  # sort and mask: np.unique's hashing is ~10x slower here
    first[1:] = packed[1:] != packed[:-1]
    packed = packed[first]
    owner = (packed >> np.uint64(32)).astype(np.int64)
    values = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    bounds = np.searchsorted(owner, np.arange(n + 1))
    return [values[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def shingle_sets(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, params: MinHashParams) -> list[np.ndarray]:
    """Each document's sorted, distinct shingle hashes."""
    return distinct_sets(*shingle_hashes(texts, params), len(texts))


def signatures_and_sets(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, params: MinHashParams,
                        backend: Backend = "numpy") -> tuple[np.ndarray, list[np.ndarray]]:
    """`signatures(texts)` and `shingle_sets(texts)` from one hashing pass, the costly part of both."""
    sigs, sets = [np.empty((0, params.num_perm), U32)], []
    for batch in batches(texts):
        hashes, doc = shingle_hashes(batch, params)
        sigs.append(batch_signatures(hashes, doc, len(batch), params, backend))
        sets.extend(distinct_sets(hashes, doc, len(batch)))
    return np.concatenate(sigs), sets


def to_blobs(sets: list[np.ndarray]) -> pa.Array:
    return pa.array([s.tobytes() for s in sets], pa.large_binary())


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two sorted distinct arrays."""
    common = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - common
    return common / union if union else 1.0
