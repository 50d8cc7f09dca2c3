"""Exact Jaccard similarity of shingle sets: what `dedup.fuzzy.threshold` means.

A document's shingle set is the set of 32-bit hashes of its shingles, the very values MinHash
summarises (`stages.dedup.minhash.shingle_hashes`), so the S-curve of LSH and the verification
speak about the same sets. Sets are built only for candidate documents, and travel as the raw
bytes of a sorted uint32 array.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from stages.dedup.minhash import MinHashParams, shingle_hashes


def shingle_sets(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, params: MinHashParams) -> list[np.ndarray]:
    """Each document's sorted, distinct shingle hashes."""
    hashes, doc = shingle_hashes(texts, params)
    packed = np.sort((doc.astype(np.uint64) << np.uint64(32)) | hashes.astype(np.uint64))
    first = np.ones(len(packed), bool)  # sort and mask: np.unique's hashing is ~10x slower here
    first[1:] = packed[1:] != packed[:-1]
    packed = packed[first]
    owner = (packed >> np.uint64(32)).astype(np.int64)
    values = (packed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    bounds = np.searchsorted(owner, np.arange(len(texts) + 1))
    return [values[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]


def to_blobs(sets: list[np.ndarray]) -> pa.Array:
    return pa.array([s.tobytes() for s in sets], pa.large_binary())


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, np.uint32)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """|a & b| / |a | b| of two sorted distinct arrays."""
    common = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - common
    return common / union if union else 1.0
