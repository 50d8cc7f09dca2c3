"""MinHash signatures for a whole batch of texts, bit-compatible with datasketch's default scheme.

Normalising and shingling run in polars (Rust), shingle hashing and the permutation/min step run
vectorised in numpy (or torch), so no Python code runs per shingle. datasketch 2.x's `affine32`
scheme pre-mixes each 32-bit shingle hash with the MurmurHash3 finalizer, then takes, per
permutation k, min over shingles of `a_k * h + b_k mod 2^32`; the permutations `(a, b)` are taken
from datasketch itself, so `datasketch.MinHash(num_perm, seed, hashfunc=shingle_hash)` fed
`shingle_lists(...)` gives exactly `signatures(...)`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
from datasketch import MinHash

from pipeline.config import FuzzyDedupConfig

Backend = Literal["numpy", "torch"]

U32 = np.uint32
U64 = np.uint64
MASK32 = (1 << 32) - 1
# Shingle hash: a polynomial over the UTF-8 bytes mod 2^64, the length mixed in, then the 64-bit
# MurmurHash3 finalizer; the low 32 bits are the shingle's hash. Stable across library versions,
# which the persisted band index relies on (polars' own hash is not).
POLY = 0x100000001B3
LENGTH_MIX = 0x9E3779B97F4A7C15
FMIX64 = (33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)
FMIX32 = (16, 0x85EBCA6B, 13, 0xC2B2AE35, 16)
# Bound on the (shingles x num_perm) uint32 block held at once by the permutation/min step.
BLOCK_ELEMENTS = 1 << 18
HASH_CHUNK_BYTES = 1 << 17


@dataclass(frozen=True)
class MinHashParams:
    """What decides a signature; persisted with the band index so later runs can check it."""

    num_perm: int = 128
    seed: int = 1
    ngram: int = 5
    char_ngrams: bool = False
    lowercase: bool = True

    @classmethod
    def from_config(cls, cfg: FuzzyDedupConfig) -> "MinHashParams":
        return cls(num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram,
                   char_ngrams=cfg.char_ngrams, lowercase=cfg.lowercase)


def normalize(text: pl.Expr, lowercase: bool = True) -> pl.Expr:
    """Fold case, and fold every run of punctuation, symbols and whitespace into one space."""
    if lowercase:
        text = text.str.to_lowercase()
    return text.str.replace_all(r"[\p{P}\p{S}\s]+", " ").str.strip_chars(" ")


def shingle_frame(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, params: MinHashParams) -> pl.DataFrame:
    """One row per (doc, shingle), docs numbered from 0 in input order.

    A document with fewer tokens than `ngram` (including an empty one) becomes a single shingle:
    its whole normalised text, so every document gets a signature.
    """
    series = pl.Series("text", texts, dtype=pl.String).fill_null("")
    sep = "" if params.char_ngrams else " "
    norm = normalize(pl.col("text"), params.lowercase)
    tokens = norm.str.split(sep) if params.char_ngrams else norm.str.split(" ").list.eval(
        pl.element().filter(pl.element() != ""))
    grams = tokens.list.eval(
        pl.concat_str([pl.element().shift(-j) for j in range(params.ngram)], separator=sep)
    ).list.drop_nulls()
    return (
        series.to_frame()
        .with_row_index("doc")
        .select("doc", shingle=pl.when(grams.list.len() > 0).then(grams).otherwise(pl.concat_list(norm)))
        .explode("shingle")
    )


def shingle_lists(texts: Sequence[str | None], params: MinHashParams) -> list[list[str]]:
    """Each document's shingles as Python strings: what a datasketch MinHash is fed to compare."""
    frame = shingle_frame(texts, params).group_by("doc", maintain_order=True).agg("shingle")
    return frame["shingle"].to_list()


def _fmix(h: np.ndarray, constants: tuple[int, ...], dtype) -> np.ndarray:
    s1, m1, s2, m2, s3 = (dtype(c) for c in constants)
    h = h ^ (h >> s1)
    h = h * m1
    h = h ^ (h >> s2)
    h = h * m2
    return h ^ (h >> s3)


def shingle_hash(shingle: str | bytes) -> int:
    """The 32-bit hash of one shingle: the reference, and the `hashfunc` to give datasketch."""
    data = shingle.encode() if isinstance(shingle, str) else shingle
    h = 0
    for byte in data:
        h = (h * POLY + byte) & ((1 << 64) - 1)
    h ^= (len(data) * LENGTH_MIX) & ((1 << 64) - 1)
    return int(_fmix(np.array([h], U64), FMIX64, U64)[0]) & MASK32


@lru_cache(maxsize=8)
def _powers(n: int) -> np.ndarray:
    """POLY^k mod 2^64 for k in [0, n): numpy's uint64 product wraps, which is the modulus."""
    powers = np.full(max(n, 1), POLY, U64)
    powers[0] = 1
    return np.cumprod(powers, dtype=U64)


def hash_shingles(shingles: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """`shingle_hash` of every string in an Arrow string array, vectorised over its byte buffer.

    Works through the buffer in cache-sized pieces: large temporaries cost more in page faults
    than in arithmetic.
    """
    arr = shingles.combine_chunks() if isinstance(shingles, pa.ChunkedArray) else shingles
    if arr.type != pa.large_string():
        arr = arr.cast(pa.large_string())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int64, n + 1, arr.offset * 8)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if n else np.empty(0, np.uint8)
    lengths = np.diff(offsets)
    powers = _powers(int(lengths.max()) if n else 1)
    sums = np.zeros(n, U64)
    bounds = np.searchsorted(offsets, np.arange(offsets[0], offsets[-1], HASH_CHUNK_BYTES), "right") - 1
    for lo, hi in zip(bounds, np.append(bounds[1:], n)):
        hi = max(hi, lo + 1)  # a string longer than a chunk goes alone
        first, last = offsets[lo], offsets[hi]
        # byte i of a string ending at `end` is weighted POLY^(end - 1 - i)
        ends = np.repeat(offsets[lo + 1:hi + 1], lengths[lo:hi])
        weights = powers[ends - np.arange(first + 1, last + 1)]
        terms = np.append(data[first:last] * weights, U64(0))
        sums[lo:hi] = np.add.reduceat(terms, np.minimum(offsets[lo:hi] - first, last - first))
    sums[lengths == 0] = 0
    mixed = sums ^ (lengths.astype(U64) * U64(LENGTH_MIX))
    return (_fmix(mixed, FMIX64, U64) & U64(MASK32)).astype(U32)


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own affine32 permutation parameters `(a, b)` for this num_perm and seed."""
    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return a.astype(U32), b.astype(U32)


def _min_numpy(mixed: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per document (rows `starts[i]:starts[i+1]`), the min over shingles of a*h + b mod 2^32."""
    out = np.empty((len(starts), len(a)), U32)
    bounds = np.append(starts, len(mixed))
    step = max(1, BLOCK_ELEMENTS // len(a))
    doc = 0
    while doc < len(starts):
        # as many whole documents as fit one block (at least one)
        last = max(doc + 1, int(np.searchsorted(bounds, bounds[doc] + step, "right")) - 1)
        last = min(last, len(starts))
        lo, hi = bounds[doc], bounds[last]
        block = mixed[lo:hi, None] * a
        block += b
        out[doc:last] = np.minimum.reduceat(block, bounds[doc:last] - lo, axis=0)
        doc = last
    return out


def _mul32(x, c):
    """x * c mod 2^32 for torch int64 tensors holding 32-bit values, never overflowing int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _min_torch(mixed: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The same step in torch (CUDA when present): int64 arithmetic, as torch lacks uint32 kernels."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    h = torch.from_numpy(mixed.astype(np.int64)).to(device)
    ta = torch.from_numpy(a.astype(np.int64)).to(device)
    tb = torch.from_numpy(b.astype(np.int64)).to(device)
    lengths = np.diff(np.append(starts, len(mixed)))
    owner = torch.from_numpy(np.repeat(np.arange(len(starts)), lengths)).to(device)
    out = torch.full((len(starts), len(a)), MASK32, dtype=torch.int64, device=device)
    step = max(1, BLOCK_ELEMENTS * (64 if device == "cuda" else 1) // len(a))
    for lo in range(0, len(mixed), step):
        hv = h[lo:lo + step, None]
        block = (_mul32(hv, ta) + tb) & MASK32
        idx = owner[lo:lo + step, None].expand_as(block)
        out.scatter_reduce_(0, idx, block, reduce="amin")
    return out.cpu().numpy().astype(U32)


def signatures_from_hashes(hashes: np.ndarray, doc: np.ndarray, n_docs: int, num_perm: int, seed: int,
                           backend: Backend = "numpy") -> np.ndarray:
    """(n_docs, num_perm) uint32 signatures from shingle hashes and their (sorted) document index."""
    a, b = permutations(num_perm, seed)
    if n_docs == 0:
        return np.empty((0, num_perm), U32)
    starts = np.searchsorted(doc, np.arange(n_docs))
    mixed = _fmix(hashes.astype(U32), FMIX32, U32)
    return (_min_torch if backend == "torch" else _min_numpy)(mixed, starts, a, b)


def signatures(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray, params: MinHashParams,
               backend: Backend = "numpy") -> np.ndarray:
    """Text to (n, num_perm) uint32 MinHash signatures, shingling included."""
    frame = shingle_frame(texts, params)
    hashes = hash_shingles(frame["shingle"].to_arrow())
    return signatures_from_hashes(hashes, frame["doc"].to_numpy(), len(texts), params.num_perm,
                                  params.seed, backend)
